"""PReLU's backward pass: torch's CPU kernel against napari_sizeloss.network.PReLU's.

Two measurements, medians over repeats, torch's default threads:

1. one PReLU's forward and backward on ENet's activation shapes (microseconds);
2. whole ENet training steps (forward, cross-entropy, backward, fused Adam)
   with ``torch.nn.PReLU`` and with the project's ``PReLU``, the two models
   alternating in rounds so that the machine's drift hits both alike.

    python scripts/prelu_bench.py [--rounds 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from napari_sizeloss.device import make_adam
from napari_sizeloss.network import ENet, PReLU, with_torch_prelu

SHAPES = [(1, 16, 128, 128), (1, 64, 64, 64), (1, 128, 32, 32), (8, 64, 24, 24)]


def _median_us(fn, n: int = 51) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def forward_and_backward() -> None:
    print("one PReLU, forward and backward (.backward(), as in training), microseconds (median of 51):")
    print(f"{'shape':>20} {'torch.nn.PReLU':>15} {'PReLU':>8}")
    for shape in SHAPES:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        times = [_median_us(lambda m=m, x=x, g=g: m(x).backward(g)) for m in (nn.PReLU(shape[1]), PReLU(shape[1]))]
        print(f"{str(shape):>20} {times[0]:15.0f} {times[1]:8.0f}")


def training_steps(rounds: int) -> None:
    for batch, side in ((1, 256), (8, 96)):
        models = {}
        for name in ("torch.nn.PReLU", "napari_sizeloss PReLU"):
            torch.manual_seed(0)
            model = ENet()
            if name == "torch.nn.PReLU":
                with_torch_prelu(model)
            models[name] = (model, make_adam(model.parameters(), 5e-4))
        x = torch.rand(batch, 1, side, side)
        y = torch.randint(0, 2, (batch, side, side))
        times: dict[str, list[float]] = {k: [] for k in models}
        for r in range(rounds + 1):
            for name, (model, opt) in models.items():
                for _ in range(8):
                    t0 = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x), y).backward()
                    opt.step()
                    if r:  # the first round warms up
                        times[name].append(time.perf_counter() - t0)
        print(f"training step, {side}x{side}, batch {batch}: "
              + ", ".join(f"{k} {statistics.median(v) * 1000:.1f} ms" for k, v in times.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    forward_and_backward()
    training_steps(args.rounds)


if __name__ == "__main__":
    main()
