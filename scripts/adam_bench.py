"""torch's fused Adam against FlatAdam on ENet, alternating in one process.

Prints, for each optimiser, the median wall time of ``optimizer.step()``
alone (ENet's 367 parameters, gradients in place) and of a whole 256x256,
batch-1 training step (the bench's :class:`~napari_sizeloss.bench.TrainStep`
with its optimiser swapped), then how far the two optimisers' weights are
apart after the same steps from the same gradients.

    python scripts/adam_bench.py [--rounds 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from napari_sizeloss.bench import TrainStep
from napari_sizeloss.flat_adam import FlatAdam


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {}
    for name in ("torch", "flat"):
        step = TrainStep("cpu", channels_last=True)  # same seed: same weights
        params = list(step.forward.parameters())
        lr = step.opt.param_groups[0]["lr"]
        step.opt = (torch.optim.Adam(params, lr=lr, fused=True) if name == "torch" else FlatAdam(params, lr=lr))
        steps[name] = step

    # the same gradients through both: how far apart the weights end
    a, b = steps["torch"], steps["flat"]
    for _ in range(3):
        a.opt.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        a()
        for pa, pb in zip(a.forward.parameters(), b.forward.parameters(), strict=True):
            pb.grad = pa.grad.clone()
        b.opt.step()
    pairs = list(zip(a.forward.parameters(), b.forward.parameters(), strict=True))
    apart = max((pa - pb).abs().max().item() for pa, pb in pairs)
    scale = max(pa.abs().max().item() for pa in a.forward.parameters())
    for s in (a, b):
        torch.manual_seed(0)
        s()  # gradients in place for the optimiser-alone timing
    grads = {name: [p.grad.clone() for p in s.forward.parameters()] for name, s in steps.items()}

    opt_ms = {name: [] for name in steps}
    step_ms = {name: [] for name in steps}
    for r in range(args.rounds):
        order = ("torch", "flat") if r % 2 == 0 else ("flat", "torch")
        for name in order:
            s = steps[name]
            weights = copy.deepcopy(s.forward.state_dict())
            for p, g in zip(s.forward.parameters(), grads[name], strict=True):
                p.grad = g
            opt_ms[name].append(_median_ms(s.opt.step, 100))
            s.forward.load_state_dict(weights)  # in place: the flat views stay
            for _ in range(3):
                s()
            step_ms[name].append(statistics.median(s() for _ in range(15)))
            print(f"round {r + 1}: {name:>5}: optimizer.step {opt_ms[name][-1]:.3f} ms, "
                  f"256x256 b1 step {step_ms[name][-1]:.1f} ms", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ENet, "
          f"{sum(p.numel() for p in a.forward.parameters())} weights in "
          f"{len(list(a.forward.parameters()))} parameters")
    for label, figures in (("optimizer.step (ms)", opt_ms), ("training step 256x256 b1 (ms)", step_ms)):
        t, f = statistics.median(figures["torch"]), statistics.median(figures["flat"])
        faster = sum(y < x for x, y in zip(figures["torch"], figures["flat"], strict=True))
        print(f"  {label}: torch fused Adam {t:.3f}, FlatAdam {f:.3f} ({f / t:.3f}; faster in {faster}/{args.rounds})")
    print(f"  weights after 3 steps from the same gradients: at most {apart:.2e} apart (largest weight {scale:.2f})")


if __name__ == "__main__":
    main()
