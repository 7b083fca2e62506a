"""Memory layout on the CPU: contiguous (NCHW) against channels-last, alternating.

Three measurements, each in rounds that run the two layouts in turn (the
order flips every round) so that the machine's drift hits both alike:

1. every pixel of a 256x256x10x25 cine through ``predict_volume`` (seconds);
2. a 256x256, batch-1 training step (``bench.train_step_ms``, ms);
3. a 96x96, batch-8 training step, the interactive configuration (ms);
4. ``--only input``: a channels-last 256x256, batch-1 step whose one-channel
   input is restrided by ``device.to_channels_last`` against one made the
   usual PyTorch way, ``x.contiguous(memory_format=torch.channels_last)``,
   which leaves a one-channel tensor's strides NCHW. Until 2026-12-06 the
   second made ENet's trunk run NCHW (about 20% slower); run it on an older
   ``network.py`` to see that.

Channels-last is what ``predict_volume`` and the trainer's fast path
(``TrainConfig.amp``) use on the CPU since 2026-12-02; contiguous is the
plain path (``amp=False``) and what they used before.

    python scripts/layout_bench.py [--rounds 4] [--only predict|step256|step96|input]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_sizeloss.bench import train_step_ms
from napari_sizeloss.network import ENet
from napari_sizeloss.trainer import predict_volume

LAYOUTS = {False: "contiguous", True: "channels-last"}


def _rounds(measure, rounds: int, unit: str, label: str, names: dict[bool, str] = LAYOUTS) -> None:
    results: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for channels_last in (False, True) if r % 2 == 0 else (True, False):
            results[channels_last].append(measure(channels_last))
        print(f"  round {r + 1}: " + ", ".join(f"{names[k]} {v[-1]:.2f} {unit}" for k, v in results.items()),
              flush=True)
    plain, last = statistics.median(results[False]), statistics.median(results[True])
    print(f"{label}: {names[False]} {plain:.2f} {unit}, {names[True]} {last:.2f} {unit} "
          f"(median of {rounds}; {plain / last:.2f}x)", flush=True)


def predict(rounds: int) -> None:
    torch.manual_seed(0)
    model = ENet()
    image = np.random.default_rng(0).random((256, 256, 10, 25), dtype=np.float32)
    for channels_last in (False, True):  # warm-up: folded copies, allocator, oneDNN's primitives
        predict_volume(model, image[..., :4], normalisation="auto", channels_last=channels_last)

    def measure(channels_last: bool) -> float:
        t0 = time.perf_counter()
        predict_volume(model, image, normalisation="auto", channels_last=channels_last)
        return time.perf_counter() - t0

    print("every pixel of a 256x256x10x25 cine (predict_volume, batch norms folded, 8 slices per batch):")
    _rounds(measure, rounds, "s", "cine")


def step(size: int, batch: int, rounds: int) -> None:
    print(f"training step, {size}x{size}, batch {batch} (bench.train_step_ms, median of 10 steps after 3):")
    _rounds(lambda cl: train_step_ms(torch.device("cpu"), size=size, batch=batch, repeats=10, warmup=3,
                                     channels_last=cl),
            rounds, "ms", f"step {size}x{size} b{batch}")


def input_layout(rounds: int) -> None:
    from napari_sizeloss.bench import TrainStep

    steps = {}
    for restrided in (False, True):
        steps[restrided] = TrainStep(torch.device("cpu"), size=256, batch=1, channels_last=True)
        if not restrided:  # the usual idiom: a no-op on a one-channel tensor
            steps[restrided].x = torch.rand(1, 1, 256, 256).contiguous(memory_format=torch.channels_last)

    def measure(restrided: bool) -> float:
        step = steps[restrided]
        return statistics.median([step() for _ in range(13)][3:])

    print("channels-last 256x256 batch-1 step, the input made by x.contiguous(memory_format=channels_last) "
          "or by to_channels_last (median of 10 steps after 3):")
    _rounds(measure, rounds, "ms", "input", names={False: "x.contiguous(...)", True: "to_channels_last(x)"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", choices=["predict", "step256", "step96", "input"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads", flush=True)
    if args.only in (None, "predict"):
        predict(args.rounds)
    if args.only in (None, "step256"):
        step(256, 1, args.rounds)
    if args.only in (None, "step96"):
        step(96, 8, args.rounds)
    if args.only == "input":
        input_layout(args.rounds)


if __name__ == "__main__":
    main()
