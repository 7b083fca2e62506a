"""Eager against ``torch.compile``: training steps and whole-cine prediction, in alternating blocks.

Each round is a fresh process that builds ENet twice from the same seed, one
eager and one through :class:`napari_sizeloss.compiled.CompiledForward`,
compiles (timed: cold, or from inductor's on-disk cache), then times blocks
of training steps eager, compiled, eager, compiled... so that drift in a
shared machine's speed hits both alike. It prints per round the compile
seconds and the median step of each, then the medians over rounds; with
``--predict`` the same for predicting every pixel of a 256x256x10x25 cine
(250 slices, batches of 8) with a batch-norm-folded copy.

    python scripts/compile_bench.py [--size 256 --batch 1] [--rounds 3] [--predict]

Set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder to time cold compiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def _round(size: int, batch: int, blocks: int, steps: int, predict: bool) -> dict:
    import time

    import numpy as np
    import torch

    from napari_sizeloss.compiled import CompiledForward, compiled_predictor
    from napari_sizeloss.device import make_adam
    from napari_sizeloss.losses import partial_cross_entropy, size_penalty
    from napari_sizeloss.network import ENet
    from napari_sizeloss.trainer import predict_volume

    def trainer(compiled: bool):
        torch.manual_seed(0)
        model = ENet()
        opt = make_adam(model.parameters(), 5e-3, "cpu")
        forward = CompiledForward(model) if compiled else model
        x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1))
        targets = torch.full((batch, size, size), -1, dtype=torch.long)
        targets[:, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = 1
        lower, upper = torch.full((batch, 1), 100.0), torch.full((batch, 1), 1700.0)

        def step() -> float:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            logits = forward(x)
            probs = torch.softmax(logits, 1)[:, 1:2]
            loss = partial_cross_entropy(logits, targets) + 1e-2 * size_penalty(probs, lower, upper).mean() / size**2
            loss.backward()
            opt.step()
            return (time.perf_counter() - t0) * 1000

        return step, forward

    out: dict = {}
    eager_step, _ = trainer(False)
    compiled_step, forward = trainer(True)
    out["compile_s"] = compiled_step() / 1000
    if not forward.compiled:
        raise SystemExit(f"torch.compile failed: {forward.failure}")
    for _ in range(3):
        eager_step(), compiled_step()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(blocks):
        times["eager"] += [eager_step() for _ in range(steps)]
        times["compiled"] += [compiled_step() for _ in range(steps)]
    out["step_ms"] = {k: statistics.median(v) for k, v in times.items()}

    if predict:
        torch.manual_seed(0)
        model = ENet()
        image = np.random.default_rng(0).random((256, 256, 10, 25), dtype=np.float32)
        fast = compiled_predictor(model)
        t0 = time.perf_counter()
        predict_volume(model, image[..., :1], normalisation="auto", forward=fast)
        out["predict_compile_s"] = time.perf_counter() - t0
        predict_volume(model, image[..., :1], normalisation="auto")  # eager warm-up
        secs: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(2):
            for name, fwd in (("eager", None), ("compiled", fast)):
                t0 = time.perf_counter()
                predict_volume(model, image, normalisation="auto", forward=fwd)
                secs[name].append(time.perf_counter() - t0)
        out["predict_s"] = {k: statistics.median(v) for k, v in secs.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks of steps per process")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--predict", action="store_true", help="also time whole-cine prediction")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_round(args.size, args.batch, args.blocks, args.steps, args.predict)))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; ENet training step "
          f"{args.size}x{args.size}, batch {args.batch}; {args.rounds} fresh processes, "
          f"{args.blocks} alternating blocks of {args.steps} steps each", flush=True)
    rows = []
    for r in range(args.rounds):
        cmd = [sys.executable, __file__, "--child", "--size", str(args.size), "--batch", str(args.batch),
               "--blocks", str(args.blocks), "--steps", str(args.steps)] + (["--predict"] if args.predict else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        line = (f"round {r + 1}: compile {row['compile_s']:.1f} s; step eager {row['step_ms']['eager']:.1f} ms, "
                f"compiled {row['step_ms']['compiled']:.1f} ms")
        if args.predict:
            line += (f"; cine compile {row['predict_compile_s']:.1f} s, eager {row['predict_s']['eager']:.2f} s, "
                     f"compiled {row['predict_s']['compiled']:.2f} s")
        print(line, flush=True)
    med = statistics.median
    eager = med(r["step_ms"]["eager"] for r in rows)
    comp = med(r["step_ms"]["compiled"] for r in rows)
    print(f"median over rounds: step eager {eager:.1f} ms, compiled {comp:.1f} ms ({eager / comp:.2f}x); "
          f"compile {med(r['compile_s'] for r in rows):.1f} s", flush=True)
    if args.predict:
        pe = med(r["predict_s"]["eager"] for r in rows)
        pc = med(r["predict_s"]["compiled"] for r in rows)
        print(f"median over rounds: cine eager {pe:.2f} s, compiled {pc:.2f} s ({pe / pc:.2f}x); "
              f"compile {med(r['predict_compile_s'] for r in rows):.1f} s", flush=True)


if __name__ == "__main__":
    main()
