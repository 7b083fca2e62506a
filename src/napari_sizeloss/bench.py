"""``napari-sizeloss bench``: the speed figures, measured on this machine.

Prints each figure with the median over repeats, the machine and the
settings; ``--json`` adds one JSON object on the last line with the keys
``train_step_ms_256_b1``, ``train_images_per_s_interactive``,
``predict_cine_s``, ``time_to_dice_085_s``, ``dice_at_60s`` and more.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device) -> dict:
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_ms(device, *, size=256, batch=1, repeats=20, warmup=5, channels_last=False, amp=False) -> float:
    """Median wall time (ms) of one full training step (forward, losses, backward, Adam)."""
    import torch

    from .device import autocast, make_adam
    from .losses import partial_cross_entropy, size_penalty
    from .network import ENet

    torch.manual_seed(0)
    model = ENet().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_adam(model.parameters(), 5e-3, device)
    x = torch.rand(batch, 1, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    targets = torch.full((batch, size, size), -1, dtype=torch.long, device=device)
    targets[:, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = 1
    lower = torch.full((batch, 1), 100.0, device=device)
    upper = torch.full((batch, 1), 1700.0, device=device)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device, enabled=amp):
            logits = model(x)
        logits = logits.float()
        probs = torch.softmax(logits, 1)[:, 1:2]
        loss = partial_cross_entropy(logits, targets) + 1e-2 * size_penalty(probs, lower, upper).mean() / (size * size)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def predict_cine_s(device, *, shape=(256, 256, 10, 25), repeats=3) -> float:
    """Median seconds to predict every slice of a (X, Y, Z, T) cine volume."""
    import torch

    from .network import ENet
    from .trainer import predict_volume

    torch.manual_seed(0)
    model = ENet().to(device)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    times = []
    predict_volume(model, image[..., :1], normalisation="auto", device=device)  # warm-up
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        predict_volume(model, image, normalisation="auto", device=device, batch_size=25)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_to_quality(device, *, seconds=60.0, steps_between=25, seed=0, threads=None) -> dict:
    """Train the demo case (phantom, clicks on 3 slices of ED and ES) for
    ``seconds``, scoring the 3D Dice over all frames every ``steps_between`` steps.

    The time excludes scoring: it is training time since pressing Train.
    """
    import resource

    from .demo import make_demo_case
    from .metrics import dice_3d
    from .trainer import TrainConfig, TrainingSession

    case = make_demo_case(seed=seed)
    config = TrainConfig.interactive(steps=None, minutes=10.0, device=str(device), seed=seed,
                                     preview_every=0, threads=threads)
    session = TrainingSession(case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=config)
    train_time = 0.0
    curve = []
    first_085 = None
    run = session.run()
    last_mark = time.perf_counter()
    for event in run:
        if event.kind.value == "done":
            break
        if event.step % steps_between == 0:
            train_time += time.perf_counter() - last_mark
            dice = float(np.mean(dice_3d(session.predict(), case.target)))
            curve.append((round(train_time, 2), round(dice, 4)))
            if first_085 is None and dice >= 0.85:
                first_085 = train_time
            if train_time >= seconds:
                session.stop()
            last_mark = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "time_to_dice_085_s": first_085,
        "dice_at_60s": curve[-1][1] if curve else None,
        "dice_curve": curve,
        "peak_rss_mb": round(peak_mb, 1),
        "images_per_s": session.history[-1].images_per_s if session.history else None,
    }


def run_bench(args) -> int:
    import torch

    from .device import select_device, uses_channels_last

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    quick = args.quick
    info = machine_info(device)
    results: dict = {"machine": info, "quick": bool(quick)}
    print(f"machine: {info}")
    fast = device.type == "cuda"
    reps = 5 if quick else 20

    ms = train_step_ms(device, size=256, batch=1, repeats=reps, channels_last=fast and uses_channels_last(device), amp=fast)
    results["train_step_ms_256_b1"] = round(ms, 2)
    print(f"train step, 256x256, batch 1: {ms:.1f} ms (median of {reps})")

    from .trainer import TrainConfig

    cfg = TrainConfig.interactive()
    crop, batch = cfg.crop, cfg.batch_size
    ms_b = train_step_ms(device, size=crop, batch=batch, repeats=reps, channels_last=fast, amp=fast)
    ips = batch / (ms_b / 1000)
    results["train_step_ms_interactive"] = round(ms_b, 2)
    results["train_images_per_s_interactive"] = round(ips, 1)
    print(f"train step, interactive ({crop}x{crop} crops, batch {batch}): {ms_b:.1f} ms = {ips:.0f} images/s")

    shape = (256, 256, 10, 25) if not quick else (256, 256, 10, 5)
    s = predict_cine_s(device, shape=shape, repeats=1 if quick else 3)
    if quick:
        s *= 5
    results["predict_cine_s"] = round(s, 2)
    print(f"predict a 256x256x10x25 cine volume: {s:.2f} s{' (extrapolated from 5 frames)' if quick else ''}")

    secs = 15.0 if quick else 60.0
    q = time_to_quality(device, seconds=secs, threads=args.threads)
    results.update({k: v for k, v in q.items()})
    results["quality_budget_s"] = secs
    t85 = q["time_to_dice_085_s"]
    print(f"time to 3D Dice 0.85 on the demo phantom: {'not reached' if t85 is None else f'{t85:.1f} s'}")
    print(f"3D Dice after {secs:.0f} s of training: {q['dice_at_60s']}")
    print(f"peak memory (RSS): {q['peak_rss_mb']} MB")
    if args.json:
        print(json.dumps(results))
    sys.stdout.flush()
    return 0


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure training and prediction speed on this machine")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--quick", action="store_true", help="fewer repeats and a 15 s quality run")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run_bench)
