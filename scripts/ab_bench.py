"""The bench's speed figures for the working tree against an earlier revision, in alternating fresh processes.

    python scripts/ab_bench.py --base 7c8d3db [--rounds 5] [--only step256,interactive,cine,roi]

The development machine's speed drifts by 20 % or more within an hour, so a
before/after comparison made an hour apart says little. This script checks
out ``--base``'s ``src`` (``git archive``) into a temporary folder and, in
each round, runs one fresh Python process per side (the order alternates
between rounds) that measures what ``napari-sizeloss bench`` measures, with
the same settings (the trainer's layout, 2 threads):

- ``step256``: one training step on a 256x256 slice, batch 1 (ms, median of 10)
- ``interactive``: one training step on the interactive batch (96x96 crops x 8; ms, median of 10)
- ``cine``: predicting every pixel of a 256x256x10x25 cine (s, median of 2)
- ``roi``: predicting it inside the 96x96 region of interest, averaged over the 4 flips (s, median of 2)

It prints each round's figures and, per figure, the median of each side and
the median of the paired ratios (new / base; below 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _figures import figure_list, rounds

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, torch
torch.set_num_threads(2)
from napari_sizeloss import bench
from napari_sizeloss.device import uses_channels_last
from napari_sizeloss.trainer import TrainConfig
cpu = torch.device("cpu")
layout = uses_channels_last(cpu)
cfg = TrainConfig.interactive()
out = {}
for what in sys.argv[1].split(","):
    if what == "step256":
        out[what] = bench.train_step_ms(cpu, size=256, batch=1, repeats=10, channels_last=layout)
    elif what == "interactive":
        out[what] = bench.train_step_ms(cpu, size=cfg.crop, batch=cfg.batch_size, repeats=10, channels_last=layout)
    elif what == "cine":
        out[what] = bench.predict_cine_s(cpu, repeats=2)
    elif what == "roi":
        out[what] = bench.predict_cine_s(cpu, repeats=2, box_side=cfg.crop, tta="flips")
out["module"] = bench.__file__
print(json.dumps(out))
"""

UNITS = {"step256": "ms", "interactive": "ms", "cine": "s", "roi": "s"}


def export_source(rev: str, folder: Path) -> Path:
    """``rev``'s ``src`` folder, written under ``folder``; returns the path to put on PYTHONPATH."""
    archive = folder / "src.tar"
    with open(archive, "wb") as f:
        done = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], stdout=f, stderr=subprocess.PIPE,
                              text=True)
    if done.returncode:
        raise SystemExit(f"ab_bench: cannot export src at {rev!r}: {done.stderr.strip().splitlines()[-1]}")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def measure(src: Path, only: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run([sys.executable, "-c", CHILD, only], env=env, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"ab_bench: the measurement with {src} failed: {last}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(out.pop("module")).is_relative_to(src):
        raise RuntimeError(f"the child imported napari_sizeloss from outside {src}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--rounds", type=rounds, default=5, help="pairs of processes (at least 1)")
    parser.add_argument("--only", type=figure_list(UNITS), default="step256,interactive,cine,roi",
                        help="comma-separated: " + ",".join(UNITS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"base": export_source(args.base, Path(tmp)), "new": REPO / "src"}
        print(f"base {args.base} against the working tree; {args.rounds} rounds, fresh processes, "
              f"2 threads, alternating order", flush=True)
        runs: dict[str, list[dict]] = {"base": [], "new": []}
        for r in range(args.rounds):
            order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
            for side in order:
                runs[side].append(measure(sides[side], ",".join(args.only)))
            line = "  ".join(f"{w} {runs['base'][-1][w]:.3g} -> {runs['new'][-1][w]:.3g}" for w in args.only)
            print(f"round {r + 1}: {line}", flush=True)
    print("figure        base (median)   new (median)   new/base (median of pairs)")
    for w in args.only:
        base = [run[w] for run in runs["base"]]
        new = [run[w] for run in runs["new"]]
        ratio = statistics.median(n / b for n, b in zip(new, base, strict=True))
        unit = UNITS[w]
        print(f"{w:12s}  {statistics.median(base):10.3f} {unit:2s}  {statistics.median(new):10.3f} {unit:2s}  "
              f"{ratio:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
