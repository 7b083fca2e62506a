"""Whole-cine prediction speed by allocator setting, batch-norm folding and batch size.

Predicts every pixel of a random 256x256x10x25 cine (250 slices) with an
untrained ENet, on the compute thread (as the widget does) or the main
thread (as the CLI does), each case in a fresh process because glibc's
allocator settings are process-wide:

``malloc``   ``tuned`` (:func:`napari_sizeloss.allocator.tune_allocator`) or
             ``default`` (glibc as it comes: ``NAPARI_SIZELOSS_TUNE_MALLOC=0``);
``fold``     batch norms folded into the convolutions (``yes``) or not;
``batch``    slices per forward pass.

The cases run in turn, ``--rounds`` times (a fresh process each time), so
that drift in a shared machine's speed hits them alike; it prints the median
over rounds of seconds per cine, milliseconds per slice and minor page faults
per slice (pages the kernel had to hand out afresh). The first case is the
setting before this project tuned prediction (glibc's defaults, no folding,
25 slices per batch), the last the current default.

    python scripts/alloc_bench.py [--rounds 3] [--thread compute|main]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _run_case(fold: bool, batch: int, on_compute_thread: bool) -> dict:
    """One timed prediction of the cine (after a warm-up) in this process."""
    import resource
    import time

    import numpy as np
    import torch

    from napari_sizeloss import inference
    from napari_sizeloss.allocator import allocator_tuned
    from napari_sizeloss.compute_thread import call
    from napari_sizeloss.network import ENet
    from napari_sizeloss.trainer import predict_volume

    if not fold:
        inference.FOLD_MIN_PIXELS = 1 << 62

    def work() -> dict:
        torch.manual_seed(0)
        model = ENet()
        image = np.random.default_rng(0).random((256, 256, 10, 25), dtype=np.float32)
        predict_volume(model, image[..., :2], normalisation="auto", batch_size=batch)  # warm-up
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        predict_volume(model, image, normalisation="auto", batch_size=batch)
        seconds = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        return {"s": seconds, "faults": faults, "tuned": allocator_tuned()}

    return call(work) if on_compute_thread else work()


CASES = [("default", "no", 25), ("default", "no", 8), ("tuned", "no", 8), ("default", "yes", 8), ("tuned", "yes", 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--thread", choices=("compute", "main"), default="compute")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        fold, batch = args.case
        print(json.dumps(_run_case(fold == "yes", int(batch), on_compute_thread=args.thread == "compute")))
        return

    import statistics

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs; "
          f"256x256x10x25 cine on the {args.thread} thread, median of {args.rounds} fresh processes per case")
    runs: dict[tuple, list[dict]] = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case in CASES:
            malloc, fold, batch = case
            env = dict(os.environ, NAPARI_SIZELOSS_TUNE_MALLOC="1" if malloc == "tuned" else "0")
            out = subprocess.run(
                [sys.executable, __file__, "--case", fold, str(batch), "--thread", args.thread],
                check=True, capture_output=True, text=True, env=env,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert bool(r["tuned"]) == (malloc == "tuned"), r
            runs[case].append(r)
    print(f"{'malloc':>8} {'fold':>5} {'batch':>6} {'s/cine':>8} {'ms/slice':>9} {'faults/slice':>13}  runs (s)")
    for case, rs in runs.items():
        s = statistics.median(r["s"] for r in rs)
        faults = statistics.median(r["faults"] for r in rs)
        print(f"{case[0]:>8} {case[1]:>5} {case[2]:>6} {s:8.2f} {s / 250 * 1000:9.1f} {faults / 250:13.0f}  "
              + ", ".join(f"{r['s']:.2f}" for r in rs))


if __name__ == "__main__":
    main()
