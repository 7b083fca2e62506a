"""Training steps through the C++ PReLU operator against the Python autograd function, alternating in one process.

    python scripts/native_op_bench.py [--rounds 8] [--threads 2] [--only step256,interactive,floor] [--fused | --ends]

Each round measures, with the PReLU operator (:mod:`napari_sizeloss.native_op`'s;
the bottleneck ends apart, as ``--ends`` compares them; the same bits) and
with :class:`napari_sizeloss.network._PReLUFunction` (both run the same C
kernels of :mod:`napari_sizeloss.native_prelu`; the order flips every round),
the median of 8 training steps as ``napari-sizeloss bench`` times them
(:class:`napari_sizeloss.bench.TrainStep`: forward, cross-entropy and size
penalty, backward, Adam), on one model per shape:

- ``step256``: a 256x256 slice, batch 1 (the paper's configuration)
- ``interactive``: the trainer's batch of 96x96 crops x 8
- ``floor``: a 16x16 slice, batch 1, where the arithmetic is nothing: the
  per-operator cost of a step

and prints each round, the medians and the median of the paired ratios
(operator / function; below 1 is faster). Three steps of each path from the
same seed are first checked to leave the same weights, to the bit. Builds
the operator first if it is not cached (about 20 s).

``--fused`` compares instead the PReLU operator alone (batch norms torch's)
with the PReLU operator and batch norm + PReLU pairs fused
(:data:`napari_sizeloss.native_op.BN_PRELU`): within float rounding, not to
the bit, so the check prints how far the first step's gradients are apart.

``--ends`` compares every operator but the bottleneck ends
(:data:`napari_sizeloss.native_op.SUM_PRELU`: the spatial dropout, residual
sum and PReLU apart) with every operator: the same bits but for the end
PReLUs' slope gradients (summed in another order since 2026-12-07's
evening), so the check is that the first step's other gradients are the same
to the bit, and it prints how far those slope gradients are apart.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _figures import figure_list, rounds
from napari_sizeloss import bench, native_op
from napari_sizeloss.allocator import tune_allocator
from napari_sizeloss.trainer import TrainConfig

FIGURES = ("step256", "interactive", "floor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=rounds, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", type=figure_list(FIGURES), default=",".join(FIGURES),
                        help="comma-separated figures (default: all)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--fused", action="store_true",
                        help="PReLU operator alone against PReLU operator + fused batch norm and PReLU")
    choice.add_argument("--ends", action="store_true",
                        help="every operator but the bottleneck ends against every operator")
    args = parser.parse_args()
    wanted = args.only
    torch.set_num_threads(args.threads)
    tune_allocator()
    if not native_op.wait(timeout=600):
        raise SystemExit(f"error: the C++ operator is not available here: {native_op.status()}")
    print(f"torch {torch.__version__}, {args.threads} threads; operator: {native_op.status()}")
    if args.fused and native_op.BN_PRELU is None:
        raise SystemExit("error: the fused batch norm and PReLU is not available here")
    if args.ends and native_op.SUM_PRELU is None:
        raise SystemExit("error: the bottleneck-end operator is not available here")
    cpu = torch.device("cpu")
    # the new path and the old one, as arguments of native_op.enabled
    if args.fused:
        paths = {True: {"use": True, "fused": True}, False: {"use": True, "fused": False}}
        old_name, new_name = "operator", "fused"
    elif args.ends:
        paths = {True: {"use": True}, False: {"use": True, "ends": False}}
        old_name, new_name = "apart", "ends"
    else:
        paths = {True: {"use": True, "fused": False, "ends": False}, False: {"use": False}}
        old_name, new_name = "function", "operator"

    weights, grads = {}, {}
    for new in (True, False):
        with native_op.enabled(**paths[new]):
            torch.manual_seed(0)
            step = bench.TrainStep(cpu, size=64, batch=2, channels_last=True)
            step()
            grads[new] = {name: p.grad.clone() for name, p in step.forward.named_parameters()}  # the first step's
            for _ in range(2):
                step()
            weights[new] = [t.detach().clone() for t in step.forward.state_dict().values()]

    def apart(names) -> float:
        return max(((grads[True][n] - grads[False][n]).abs().max() / grads[False][n].abs().max().clamp_min(1e-30))
                   .item() for n in names)

    # (Adam's first steps move each weight by about +-lr whatever the gradient's size: compare gradients)
    if args.fused:
        print(f"gradients of the first training step (dropout on): at most {apart(grads[False]):.1e} apart "
              "(relative to each tensor's largest)")
    elif args.ends:
        slopes = [n for n in grads[False] if n.endswith("out_act.weight")]
        if not all(torch.equal(grads[True][n], grads[False][n]) for n in grads[False] if n not in slopes):
            raise SystemExit("error: the bottleneck-end operator's gradients differ beyond its slopes'")
        print(f"gradients of the first training step (dropout on): the same to the bit but the {len(slopes)} end "
              f"slopes', at most {apart(slopes):.1e} apart (relative to each tensor's largest)")
    elif not all(torch.equal(a, b) for a, b in zip(weights[True], weights[False], strict=True)):
        raise SystemExit("error: the operator's training steps differ from the function's")
    else:
        print("weights after 3 training steps (dropout on): the same to the bit")

    crop, batch = TrainConfig.interactive().crop, TrainConfig.interactive().batch_size
    shapes = {"step256": (256, 1), "interactive": (crop, batch), "floor": (16, 1)}
    steps = {}

    def step_ms(name: str) -> float:
        if name not in steps:  # one model per shape, warmed up once; the rounds alternate on it
            size, n = shapes[name]
            steps[name] = bench.TrainStep(cpu, size=size, batch=n, channels_last=True)
            for _ in range(3):
                steps[name]()
        return statistics.median(steps[name]() for _ in range(8))

    results = {name: {True: [], False: []} for name in wanted}
    for r in range(args.rounds):
        order = (False, True) if r % 2 else (True, False)
        parts = []
        for name in wanted:
            for new in order:
                with native_op.enabled(**paths[new]):
                    results[name][new].append(step_ms(name))
            parts.append(f"{name} {results[name][False][-1]:.1f} -> {results[name][True][-1]:.1f} ms")
        print(f"round {r + 1} ({old_name} -> {new_name}): " + "  ".join(parts), flush=True)
    print(f"{'figure':12} {old_name + ' (median)':>18} {new_name + ' (median)':>18} "
          f"{new_name + '/' + old_name + ' (pairs)':>26}")
    for name in wanted:
        old, new = results[name][False], results[name][True]
        ratio = statistics.median(n / o for n, o in zip(new, old, strict=True))
        faster = sum(n < o for n, o in zip(new, old, strict=True))
        print(f"{name:12} {statistics.median(old):15.1f} ms {statistics.median(new):15.1f} ms {ratio:20.3f} "
              f"({faster} of {len(old)} faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
