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

With ``--train`` it times training steps instead (``bench.TrainStep``,
channels-last, as the trainer runs them: 256x256 at batch 1 and 96x96 crops
at batch 8), glibc's allocator ``default`` against ``tuned``, which a
``TrainingSession`` has done when it starts since 2026-12-06 (before, only
the first prediction tuned it).

    python scripts/alloc_bench.py [--rounds 3] [--thread compute|main]
    python scripts/alloc_bench.py --train [--rounds 3]
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


def _run_train_case(size: int, batch: int) -> dict:
    """Median step time (ms) and page faults per step of 20 steps after 5, in this process."""
    import resource
    import statistics

    from napari_sizeloss.allocator import allocator_tuned
    from napari_sizeloss.bench import TrainStep

    step = TrainStep("cpu", size=size, batch=batch, channels_last=True)
    for _ in range(5):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = [step() for _ in range(20)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return {"ms": statistics.median(times), "faults": faults / 20, "tuned": allocator_tuned()}


def train_main(rounds: int) -> None:
    import statistics

    import torch

    configs = [(256, 1), (96, 8)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; channels-last training steps, "
          f"median of 20 after 5 per process, median of {rounds} fresh processes per case")
    runs: dict[tuple, list[dict]] = {(m, c): [] for c in configs for m in ("default", "tuned")}
    for r in range(rounds):
        for (malloc, (size, batch)) in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            env = dict(os.environ, NAPARI_SIZELOSS_TUNE_MALLOC="1" if malloc == "tuned" else "0")
            out = subprocess.run([sys.executable, __file__, "--train-case", str(size), str(batch)],
                                 check=True, capture_output=True, text=True, env=env)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert bool(result["tuned"]) == (malloc == "tuned"), result
            runs[(malloc, (size, batch))].append(result)
    print(f"{'malloc':>8} {'step':>10} {'ms/step':>8} {'faults/step':>12}  runs (ms)")
    for (malloc, (size, batch)), rs in runs.items():
        ms = statistics.median(x["ms"] for x in rs)
        faults = statistics.median(x["faults"] for x in rs)
        print(f"{malloc:>8} {f'{size}x{size} b{batch}':>10} {ms:8.1f} {faults:12.0f}  "
              + ", ".join(f"{x['ms']:.1f}" for x in rs))


CASES = [("default", "no", 25), ("default", "no", 8), ("tuned", "no", 8), ("default", "yes", 8), ("tuned", "yes", 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--thread", choices=("compute", "main"), default="compute")
    parser.add_argument("--train", action="store_true", help="time training steps instead of a prediction")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--train-case", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_case:
        print(json.dumps(_run_train_case(*args.train_case)))
        return
    if args.train:
        train_main(args.rounds)
        return
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
