"""Where a 256x256, batch-1 ENet training step spends its time, by kind of operator.

Runs ``--steps`` steps (forward, cross-entropy, backward, fused Adam) under
torch.profiler after a warm-up and prints each kind's share of the CPU time
the profiler saw (the profiler itself adds overhead per operator, so read
shares, not absolute times), then the median step time without the profiler.

With ``--operators N``, then the N operators (and autograd nodes, whose
self time is their C++ or Python backward's) with the most self time, in
ms per step as the profiler saw them, with their calls per step.

    python scripts/step_profile.py [--size 256] [--batch 1] [--steps 20] [--contiguous] [--operators 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from napari_sizeloss.allocator import tune_allocator
from napari_sizeloss.device import make_adam, to_channels_last
from napari_sizeloss.network import ENet

KINDS = [  # in order: an operator counts for the first kind whose key it contains
    ("convolutions (forward and backward)", ("conv",)),
    ("batch norm + PReLU, fused (native_op)", ("bn_prelu", "bnprelu")),
    ("bottleneck ends: dropout, sum, PReLU (native_op)", ("sum_prelu", "sumprelu")),
    ("PReLU (forward and backward)", ("prelu", "threshold_backward", "addcmul")),
    ("batch norm", ("batch_norm",)),
    ("max-pool / unpool", ("max_pool", "max_unpool")),
    ("Adam", ("adam",)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--operators", type=int, default=0, metavar="N",
                        help="also list the N operators with the most self time per step")
    parser.add_argument("--contiguous", action="store_true",
                        help="NCHW tensors (the trainer's eager path is channels-last on the CPU since 2026-12-02)")
    args = parser.parse_args()
    tune_allocator()  # as a TrainingSession does
    torch.manual_seed(0)
    model = ENet()
    x = torch.rand(args.batch, 1, args.size, args.size)
    if not args.contiguous:
        model = model.to(memory_format=torch.channels_last)
        x = to_channels_last(x)
    opt = make_adam(model.parameters(), 5e-4)
    y = torch.randint(0, 2, (args.batch, args.size, args.size))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    # torch's operators, ours (napari_sizeloss::prelu, whose C kernels run inside it) and the autograd nodes
    # (Python functions' "...Backward", C++ ones' "CppNode<...>"); not the profiler's nesting wrappers
    events = [e for e in prof.key_averages()
              if e.key.startswith(("aten::", "napari_sizeloss::")) or "Backward" in e.key or "CppNode" in e.key]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.size}x{args.size}, batch {args.batch}")
    print(f"median step without the profiler: {statistics.median(times) * 1000:.1f} ms (of {args.steps})")
    seen = set()
    for label, keys in KINDS:
        share = sum(e.self_cpu_time_total for e in events
                    if e.key not in seen and any(k in e.key.lower() for k in keys))
        seen.update(e.key for e in events if any(k in e.key.lower() for k in keys))
        print(f"  {label:<48} {100 * share / total:5.1f} %")
    rest = sum(e.self_cpu_time_total for e in events if e.key not in seen)
    print(f"  {'everything else (adds, dropout, copies)':<48} {100 * rest / total:5.1f} %")
    if args.operators > 0:
        print(f"the {args.operators} operators with the most self time "
              "(ms per step under the profiler, calls per step):")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.operators]:
            print(f"  {e.self_cpu_time_total / args.steps / 1000:7.2f} ms {e.count / args.steps:6.0f}x  {e.key[:90]}")


if __name__ == "__main__":
    main()
