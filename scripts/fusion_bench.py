"""Other ways to fuse or parallelise ENet on the CPU, against the eager path the tool uses.

Prediction (in this process, the paths in turn, order flipped each round): a
batch-norm-folded, channels-last ENet (what ``predict_volume`` runs) on
batches of 8 slices of 256x256, run

- eagerly under ``torch.inference_mode`` (the tool's path),
- as a TorchScript trace, frozen (``torch.jit.freeze``),
- the same after ``torch.jit.optimize_for_inference`` (oneDNN layouts),
- eagerly in two Python threads of one intra-op thread each, half the
  slices each (instead of one thread of two intra-op threads).

Then whether TorchScript's CPU fuser (NNC) can run at all in this torch build.

``--compile``: a 256x256, batch-1 training step, each case in a fresh
process with an empty inductor cache and then again with the cache it
filled: eager, ``torch.compile`` per block (every ENet bottleneck compiled
on its own, dynamo's cache limit raised so that all of them are), and the whole
network compiled (the tool's ``--compile``). Prints the first step (the
compile) and the median step. Several minutes on 2 cores.

    python scripts/fusion_bench.py [--rounds 4] [--slices 32] [--compile] [--default-malloc]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import torch
import torch.nn as nn

from napari_sizeloss.allocator import tune_allocator
from napari_sizeloss.device import to_channels_last
from napari_sizeloss.inference import fold_batch_norms
from napari_sizeloss.network import (
    DownsamplingBottleneck,
    ENet,
    InitialBlock,
    RegularBottleneck,
    UpsamplingBottleneck,
)

BATCH = 8


class _TraceableUnpool(nn.Module):
    """``nn.MaxUnpool2d(2, 2)`` through the aten operator: torch 2.13's
    ``F.max_unpool2d`` checks its output size with tensor conditions, which
    ``torch.jit.trace`` rejects (TypeError: cond must be a bool)."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size) -> torch.Tensor:
        return torch.ops.aten.max_unpool2d(x, indices, [int(s) for s in output_size])


def _folded_model() -> nn.Module:
    torch.manual_seed(0)
    model = ENet()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(4, 1, 256, 256))
    return fold_batch_norms(model.eval()).to(memory_format=torch.channels_last)


def _traced(model: nn.Module, x: torch.Tensor, optimize: bool):
    for block in model.modules():
        if isinstance(block, UpsamplingBottleneck):
            block.unpool = _TraceableUnpool()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(model, x[:BATCH], check_trace=False).eval())
        return torch.jit.optimize_for_inference(frozen) if optimize else frozen


def _run(forward, slices: torch.Tensor) -> None:
    with torch.no_grad():
        for i in range(0, slices.shape[0], BATCH):
            forward(slices[i : i + BATCH])


def _two_threads(forward, slices: torch.Tensor) -> None:
    def worker(part: torch.Tensor) -> None:
        torch.set_num_threads(1)  # this thread's intra-op threads
        with torch.inference_mode():
            _run(forward, part)

    half = slices.shape[0] // 2
    threads = [threading.Thread(target=worker, args=(part,)) for part in (slices[:half], slices[half:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def predict_paths(rounds: int, n_slices: int, tune: bool = True) -> None:
    if tune:
        tune_allocator()  # as predict_volume does
    model = _folded_model()
    slices = to_channels_last(torch.randn(n_slices, 1, 256, 256, generator=torch.Generator().manual_seed(1)))
    to_trace = _folded_model()
    t0 = time.perf_counter()
    frozen = _traced(to_trace, slices, optimize=False)
    print(f"trace + freeze (once per set of weights and input shape): {time.perf_counter() - t0:.2f} s")
    optimized = _traced(_folded_model(), slices, optimize=True)

    def eager() -> None:
        with torch.inference_mode():
            _run(model, slices)

    paths = {
        "eager (the tool)": eager,
        "TorchScript frozen": lambda: _run(frozen, slices),
        "frozen + optimize_for_inference": lambda: _run(optimized, slices),
        "2 threads x 1 intra-op thread": lambda: _two_threads(model, slices),
    }
    with torch.no_grad():
        ref = model(slices[:BATCH])
        for name, fwd in (("TorchScript frozen", frozen), ("frozen + optimize_for_inference", optimized)):
            print(f"  {name}: largest logit difference from eager {(fwd(slices[:BATCH]) - ref).abs().max().item():.1e}")
    for fn in paths.values():  # warm-up (TorchScript's profiling executor optimises on its first runs)
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            torch.set_num_threads(2)
            t0 = time.perf_counter()
            paths[name]()
            times[name].append((time.perf_counter() - t0) * 1000 / n_slices)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.1f}" for n in paths) + " ms/slice")
    base = statistics.median(times["eager (the tool)"])
    print(f"prediction, 256x256 slices in batches of {BATCH}, median of {rounds} rounds of {n_slices} slices:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:34s} {m:6.1f} ms/slice  ({base / m:.2f}x eager)")


def _fusable(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.relu(a * b + a)


def nnc_available() -> str:
    """Whether TorchScript's CPU fuser can compile a fused elementwise kernel here."""
    torch._C._jit_override_can_fuse_on_cpu(True)
    torch._C._jit_set_texpr_fuser_enabled(True)
    try:
        f = torch.jit.script(_fusable)
        a = torch.randn(64)
        for _ in range(3):
            f(a, a)
        return "yes"
    except RuntimeError as exc:
        return f"no ({str(exc).splitlines()[0]})"
    finally:
        torch._C._jit_override_can_fuse_on_cpu(False)


_STEP_CHILD = r"""
import statistics, sys
import torch._dynamo
from napari_sizeloss.bench import TrainStep
from napari_sizeloss.network import {blocks}
mode = sys.argv[1]
torch.set_num_threads(2)
step = TrainStep("cpu", size=256, batch=1, compile=mode == "whole network")  # the bench's step (tunes the allocator)
if mode == "per block":
    torch._dynamo.config.cache_size_limit = 64
    torch._dynamo.config.accumulated_cache_size_limit = 512
    for m in step.forward.modules():
        if isinstance(m, ({blocks})):
            m.compile(dynamic=False)
first = step() / 1000
for _ in range(4):
    step()
print(f"{{first:.1f}} {{statistics.median(step() for _ in range(20)):.1f}}")
"""


def compile_paths() -> None:
    blocks = ", ".join(c.__name__ for c in (InitialBlock, RegularBottleneck, DownsamplingBottleneck,
                                            UpsamplingBottleneck))
    code = _STEP_CHILD.format(blocks=blocks)
    print("training step 256x256, batch 1 (fresh processes; cold: empty inductor cache, warm: the cache it filled):")
    for mode in ("eager", "per block", "whole network"):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
            for run in ("cold", "warm") if mode != "eager" else ("",):
                out = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()
                first, step = float(out[-2]), float(out[-1])
                label = f"{mode} {run}".strip()
                print(f"  {label:20s} first step {first:6.1f} s, median step {step:6.1f} ms (of 20)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--slices", type=int, default=32, help="slices per timed run (a multiple of 16)")
    parser.add_argument("--compile", action="store_true", help="also time per-block against whole-network compile")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator at its defaults (the tool tunes it before predicting)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, 2 intra-op threads, {os.cpu_count()} CPUs")
    predict_paths(args.rounds, args.slices, tune=not args.default_malloc)
    print(f"TorchScript's CPU fuser (NNC) usable in this build: {nnc_available()}")
    if args.compile:
        compile_paths()


if __name__ == "__main__":
    main()
