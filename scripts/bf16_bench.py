"""Eager bfloat16 autocast against float32 on this CPU: one convolution, a training step, a cine prediction.

On a CPU with AMX (Intel Sapphire Rapids and later) oneDNN runs bfloat16
convolutions on the tile units; this script measures what that is worth to
ENet, eagerly, in turn with float32 (order flipped each round):

- single convolutions of ENet's shapes, forward and backward, the layer and
  its input cast to bfloat16 beforehand (the best case: no casts counted);
- a training step (forward under ``torch.autocast("cpu", bfloat16)``, loss
  in float32, backward, fused Adam), channels-last, 256x256 batch 1 and
  96x96 batch 8;
- every pixel of a 256x256x10x25 cine (``predict_volume``) under autocast.

``--compile`` instead measures training steps through ``torch.compile``
(contiguous tensors, as the package's compiled path uses on the CPU): one
network compiled for float32 and one for bfloat16 autocast (a compile of
a minute or two each), then blocks of 10 steps of each in turn.

    python scripts/bf16_bench.py [--rounds 3] [--threads 2] [--compile [--size 256 --batch 1]]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_sizeloss.bench import TrainStep, train_step_ms


def cpu_line() -> str:
    """The CPU model and whether it lists AMX / AVX-512 BF16 (Linux's /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    listed = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{model}; {', '.join(listed) if listed else 'no AMX / AVX-512 BF16 flags'}"


def conv_ms(cin: int, cout: int, side: int, kernel: int, dtype: torch.dtype, repeats: int = 30) -> tuple[float, float]:
    """Median (forward, backward) ms of one channels-last convolution, batch 1, in ``dtype`` throughout."""
    conv = torch.nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    conv = conv.to(memory_format=torch.channels_last).to(dtype)
    x = torch.rand(1, cin, side, side).to(memory_format=torch.channels_last).to(dtype).requires_grad_()
    forward, backward = [], []
    for i in range(repeats + 5):
        t0 = time.perf_counter()
        y = conv(x)
        t1 = time.perf_counter()
        y.sum().backward()
        t2 = time.perf_counter()
        if i >= 5:
            forward.append(t1 - t0)
            backward.append(t2 - t1)
    return statistics.median(forward) * 1e3, statistics.median(backward) * 1e3


def step_ms(size: int, batch: int, bf16: bool, repeats: int = 15, warmup: int = 4) -> float:
    """Median ms of a channels-last training step (``bench.train_step_ms``), under bfloat16 autocast when ``bf16``."""
    return train_step_ms("cpu", size=size, batch=batch, repeats=repeats, warmup=warmup, channels_last=True,
                         amp=bf16, dtype=torch.bfloat16)


def compiled_main(args) -> int:
    print(f"compiled training steps, {args.size}x{args.size} batch {args.batch}, contiguous")
    steps = {}
    for bf16 in (False, True):
        steps[bf16] = TrainStep("cpu", size=args.size, batch=args.batch, amp=bf16, dtype=torch.bfloat16,
                                compile=True)
        first = steps[bf16]()
        for _ in range(4):
            steps[bf16]()
        print(f"  {'bfloat16 autocast' if bf16 else 'float32'}: first step (the compile) {first / 1e3:.1f} s",
              flush=True)
    for step in steps.values():
        step.check_compiled()
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            block = [steps[bf16]() for _ in range(10)]
            times[bf16] += block
            print(f"  round {r + 1}: {'bfloat16 autocast' if bf16 else 'float32'}: "
                  f"median of 10 steps {statistics.median(block):.1f} ms", flush=True)
    f32, b16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"medians of {len(times[False])} steps: float32 {f32:.1f} ms, bfloat16 autocast {b16:.1f} ms "
          f"({f32 / b16:.2f}x)")
    return 0


def cine_s(model, image: np.ndarray, bf16: bool) -> float:
    from napari_sizeloss.trainer import predict_volume

    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        predict_volume(model, image, normalisation="auto", device="cpu")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="compiled training steps instead (minutes)")
    parser.add_argument("--size", type=int, default=256, help="with --compile: crop side")
    parser.add_argument("--batch", type=int, default=1, help="with --compile: batch size")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} intra-op threads; {cpu_line()}")
    if args.compile:
        return compiled_main(args)

    print("one convolution, channels-last, batch 1, ms (median of 30): forward / backward")
    for cin, cout, side, kernel in ((16, 16, 128, 3), (16, 64, 64, 1), (64, 16, 64, 1), (32, 32, 32, 3),
                                    (128, 32, 32, 1)):
        f32 = conv_ms(cin, cout, side, kernel, torch.float32)
        b16 = conv_ms(cin, cout, side, kernel, torch.bfloat16)
        print(f"  {cin:>3} -> {cout:<3} {side}x{side} {kernel}x{kernel}: float32 {f32[0]:.3f} / {f32[1]:.3f}, "
              f"bfloat16 {b16[0]:.3f} / {b16[1]:.3f}")

    from napari_sizeloss.network import ENet

    torch.manual_seed(0)
    model = ENet().eval()
    image = np.random.default_rng(0).random((256, 256, 10, 25), dtype=np.float32)
    cine_s(model, image[..., :1], False)  # warm-up: allocator, folding
    results: dict[str, dict[bool, list[float]]] = {}
    measures = {
        "training step 256x256 b1 (ms)": lambda bf16: step_ms(256, 1, bf16),
        "training step 96x96 b8 (ms)": lambda bf16: step_ms(96, 8, bf16),
        "every pixel of a 256x256x10x25 cine (s)": lambda bf16: cine_s(model, image, bf16),
    }
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for name, measure in measures.items():
            for bf16 in order:
                value = measure(bf16)
                results.setdefault(name, {False: [], True: []})[bf16].append(value)
                print(f"  round {r + 1}: {name}, {'bfloat16 autocast' if bf16 else 'float32'}: {value:.2f}",
                      flush=True)
    print(f"medians of {args.rounds} rounds:")
    for name, by in results.items():
        f32, b16 = statistics.median(by[False]), statistics.median(by[True])
        print(f"  {name}: float32 {f32:.2f}, bfloat16 autocast {b16:.2f} ({f32 / b16:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
