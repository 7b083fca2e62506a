"""Prediction with the compiled in-place PReLU against torch's PReLU, alternating in one process.

    python scripts/native_prelu_bench.py [--rounds 6] [--threads 2] [--only forward,cine,roi,step256,interactive]

Each round measures, with the kernel (:mod:`napari_sizeloss.native_prelu`)
and without it (``torch.prelu``, as before; the order flips every round):

- ``forward``: a batch-norm-folded, channels-last ENet on a batch of 8
  slices of 256x256 (ms, median of 5), what ``predict_volume`` runs per batch
- ``cine``: every pixel of a 256x256x10x25 cine (s), as ``napari-sizeloss bench``
- ``roi``: the same inside the 96x96 region of interest, averaged over the
  4 flips (s), what the trainer's predictions cost
- ``step256``: a training step on a 256x256 slice, batch 1 (ms, median of 8)
- ``interactive``: a training step on the interactive batch, 96x96 crops x 8
  (ms, median of 8), both as ``napari-sizeloss bench`` measures them

and prints each round, the medians and the median of the paired ratios
(kernel / torch; below 1 is faster). The network's output is checked to be
the same to the bit first (training's is, in ``tests/test_native_prelu.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _figures import figure_list, rounds
from napari_sizeloss import bench, native_prelu
from napari_sizeloss.allocator import tune_allocator
from napari_sizeloss.device import to_channels_last
from napari_sizeloss.inference import fold_batch_norms
from napari_sizeloss.network import ENet
from napari_sizeloss.trainer import TrainConfig


FIGURES = ("forward", "cine", "roi", "step256", "interactive")


def _set(use_kernel: bool, loaded: dict) -> None:
    native_prelu._state.update(loaded if use_kernel else {"lib": None, "status": "off (bench)"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=rounds, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", type=figure_list(FIGURES), default=",".join(FIGURES),
                        help="comma-separated figures (default: all)")
    args = parser.parse_args()
    wanted = args.only
    torch.set_num_threads(args.threads)
    tune_allocator()
    if native_prelu.load() is None:
        raise SystemExit(f"error: the compiled PReLU is not available here: {native_prelu.status()}")
    loaded = dict(native_prelu._state)
    print(f"torch {torch.__version__}, {args.threads} threads; kernel: {native_prelu.status()}")

    torch.manual_seed(0)
    model = ENet(in_channels=1, num_classes=2)
    with torch.no_grad():  # slopes and statistics away from their initial values, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(-0.2, 0.8)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    folded = to_channels_last(fold_batch_norms(model))
    x = torch.randn(8, 1, 256, 256).contiguous(memory_format=torch.channels_last)
    outputs = {}
    for use in (True, False):
        _set(use, loaded)
        with torch.inference_mode():
            outputs[use] = folded(x)
    if not torch.equal(outputs[True].contiguous().view(torch.int32), outputs[False].contiguous().view(torch.int32)):
        raise SystemExit("error: the kernel's logits differ from torch's")
    print("logits of 8 slices: the same to the bit")

    crop = TrainConfig.interactive().crop
    cpu = torch.device("cpu")

    def forward_ms() -> float:
        times = []
        with torch.inference_mode():
            for _ in range(6):
                t = time.perf_counter()
                folded(x)
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times[1:])

    steps = {}

    def step_ms(size: int, batch: int) -> float:
        if (size, batch) not in steps:  # one model per shape, warmed up once; the rounds alternate on it
            steps[size, batch] = bench.TrainStep(cpu, size=size, batch=batch, channels_last=True)
            for _ in range(3):
                steps[size, batch]()
        return statistics.median(steps[size, batch]() for _ in range(8))

    batch = TrainConfig.interactive().batch_size
    figures = {
        "forward": (forward_ms, "ms"),
        "cine": (lambda: bench.predict_cine_s(cpu, repeats=1), "s"),
        "roi": (lambda: bench.predict_cine_s(cpu, repeats=1, box_side=crop, tta="flips"), "s"),
        "step256": (lambda: step_ms(256, 1), "ms"),
        "interactive": (lambda: step_ms(crop, batch), "ms"),
    }
    figures = {name: figures[name] for name in wanted}
    results = {name: {True: [], False: []} for name in figures}
    for r in range(args.rounds):
        order = (False, True) if r % 2 else (True, False)
        parts = []
        for name, (measure, unit) in figures.items():
            for use in order:
                _set(use, loaded)
                results[name][use].append(measure())
            parts.append(f"{name} {results[name][False][-1]:.4g} -> {results[name][True][-1]:.4g} {unit}")
        print(f"round {r + 1} (torch -> kernel): " + "  ".join(parts), flush=True)
    _set(True, loaded)
    print(f"{'figure':10} {'torch (median)':>16} {'kernel (median)':>16} {'kernel/torch (median of pairs)':>32}")
    for name, (_, unit) in figures.items():
        old, new = results[name][False], results[name][True]
        ratio = statistics.median(n / o for n, o in zip(new, old, strict=True))
        old_m, new_m = statistics.median(old), statistics.median(new)
        print(f"{name:10} {old_m:14.4g} {unit:1} {new_m:14.4g} {unit:1} {ratio:32.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
