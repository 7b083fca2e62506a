"""Whole-cine prediction speed by allocator setting, batch-norm folding and batch size.

Predicts every pixel of a random 256x256x10x25 cine (250 slices) with an
untrained ENet, on the compute thread (as the widget does), each case in a
fresh process because glibc's allocator settings are process-wide:

``malloc``   ``tuned`` (:func:`napari_sizeloss.allocator.tune_allocator`) or
             ``default`` (glibc as it comes: ``NAPARI_SIZELOSS_TUNE_MALLOC=0``);
``fold``     batch norms folded into the convolutions (``yes``) or not;
``batch``    slices per forward pass.

It prints the median seconds per cine, milliseconds per slice and page
faults per slice (minor faults: pages the kernel had to hand out afresh).

    python scripts/alloc_bench.py [--batches 4 8 16 25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _run_case(fold: bool, batch: int, repeats: int) -> dict:
    import resource
    import statistics
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
        times, faults = [], []
        for _ in range(repeats):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            predict_volume(model, image, normalisation="auto", batch_size=batch)
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return {"s": statistics.median(times), "faults": statistics.median(faults), "tuned": allocator_tuned()}

    return call(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 25])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        fold, batch = args.case
        print(json.dumps(_run_case(fold == "yes", int(batch), args.repeats)))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs; "
          f"256x256x10x25 cine, median of {args.repeats}")
    print(f"{'malloc':>8} {'fold':>5} {'batch':>6} {'s/cine':>8} {'ms/slice':>9} {'faults/slice':>13}")
    for malloc in ("default", "tuned"):
        env = dict(os.environ, NAPARI_SIZELOSS_TUNE_MALLOC="1" if malloc == "tuned" else "0")
        for fold in ("no", "yes"):
            for batch in args.batches:
                out = subprocess.run(
                    [sys.executable, __file__, "--case", fold, str(batch), "--repeats", str(args.repeats)],
                    check=True, capture_output=True, text=True, env=env,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                assert bool(r["tuned"]) == (malloc == "tuned"), r
                print(f"{malloc:>8} {fold:>5} {batch:>6} {r['s']:8.2f} {r['s'] / 250 * 1000:9.1f} {r['faults'] / 250:13.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
