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

from .config import TTA_MODES
from .demo import TAG_STRATEGIES


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Environment variables that change the bench's figures; machine_info reports those set.
ENV_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
                "NAPARI_SIZELOSS_TUNE_MALLOC", "NAPARI_SIZELOSS_NATIVE", "MALLOC_ARENA_MAX", "LD_PRELOAD")


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
    else:
        from . import native_op, native_prelu

        info["native_prelu"] = native_prelu.status()  # with it, CPU prediction 11-14 % faster, training 5-8 %
        info["native_op"] = native_op.status()  # with it, CPU training steps another 7-11 % faster
    # settings that move the figures: OMP_WAIT_POLICY=PASSIVE made steps 2.4x slower here
    # (docs/benchmarks.md, levers); the allocator switch changes steps by about 8 %
    env = {name: os.environ[name] for name in ENV_SETTINGS if name in os.environ}
    if env:
        info["env"] = env
    return info


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainStep:
    """One full training step of a fresh ENet (forward, losses, backward, Adam), timed per call.

    A random ``(batch, 1, size, size)`` image with a 4x4 target dot in its
    centre, size bounds [100, 1700] px and the size weight 1e-2: the
    arithmetic of a real step without a data loader. Seeded, so two instances
    start from the same weights.

    ``amp``: the forward under :func:`~napari_sizeloss.device.autocast`, in
    ``dtype`` when given (``torch.bfloat16`` forces it on a CPU too);
    ``compile``: the forward through
    :class:`~napari_sizeloss.compiled.CompiledForward` (its first call compiles).
    Calling the instance runs one step and returns its wall time in ms.
    """

    def __init__(self, device, *, size=256, batch=1, channels_last=False, amp=False, dtype=None,
                 compile=False) -> None:
        import torch

        from .allocator import tune_allocator
        from .device import make_adam, to_channels_last
        from .network import ENet

        tune_allocator()  # as a TrainingSession does
        self.device = torch.device(device)
        self.size, self.amp, self.dtype, self.compile = size, amp, dtype, compile
        torch.manual_seed(0)
        model = ENet().to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.opt = make_adam(model.parameters(), 5e-3, self.device)
        self.forward = model
        if compile:
            from .compiled import CompiledForward

            self.forward = CompiledForward(model)
        self.x = torch.rand(batch, 1, size, size, device=self.device)
        if channels_last:
            self.x = to_channels_last(self.x)
        self.targets = torch.full((batch, size, size), -1, dtype=torch.long, device=self.device)
        self.targets[:, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = 1
        self.lower = torch.full((batch, 1), 100.0, device=self.device)
        self.upper = torch.full((batch, 1), 1700.0, device=self.device)

    def __call__(self) -> float:
        """Run one step; its wall time in ms (the device synchronised on both sides)."""
        import torch

        from .device import autocast
        from .losses import partial_cross_entropy, size_penalty

        _sync(self.device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, enabled=self.amp, dtype=self.dtype):
            logits = self.forward(self.x)
        logits = logits.float()
        probs = torch.softmax(logits, 1)[:, 1:2]
        size_term = size_penalty(probs, self.lower, self.upper).mean() / (self.size * self.size)
        loss = partial_cross_entropy(logits, self.targets) + 1e-2 * size_term
        loss.backward()
        self.opt.step()
        _sync(self.device)
        return (time.perf_counter() - t0) * 1000

    def check_compiled(self) -> None:
        """Raise RuntimeError if ``compile`` was asked for and the forward fell back to eager."""
        if self.compile and not self.forward.compiled:
            raise RuntimeError(f"torch.compile failed: {self.forward.failure}")


def train_step_ms(device, *, size=256, batch=1, repeats=20, warmup=5, channels_last=False, amp=False,
                  compile=False, dtype=None, first_step: dict | None = None) -> float:
    """Median wall time (ms) of one full training step (:class:`TrainStep`) after ``warmup`` steps.

    ``compile``: the forward through :class:`~napari_sizeloss.compiled.CompiledForward`;
    the first step's seconds (the compile, when compiling) go to
    ``first_step["s"]`` when a dict is given. ``dtype``: autocast's precision
    when ``amp`` (see :class:`TrainStep`).
    """
    step = TrainStep(device, size=size, batch=batch, channels_last=channels_last, amp=amp, dtype=dtype,
                     compile=compile)
    times = []
    for i in range(warmup + repeats):
        ms = step()
        if i == 0 and first_step is not None:
            first_step["s"] = ms / 1000
        if i >= warmup:
            times.append(ms)
    step.check_compiled()
    return statistics.median(times)


def predict_cine_s(device, *, shape=(256, 256, 10, 25), repeats=3, box_side: int | None = None,
                   compile=False, first_call: dict | None = None, tta: str = "none") -> float:
    """Median seconds to predict every slice of a (X, Y, Z, T) cine volume.

    ``box_side``: predict inside a centred square of this side only (what the
    trainer does: its region of interest around the dots), zero elsewhere.
    ``compile``: through a compiled folded copy, as ``Predictor(compile=True)``;
    the warm-up's seconds (the compile) go to ``first_call["s"]``.
    ``tta``: average over these test-time views (:mod:`napari_sizeloss.tta`).
    """
    import torch

    from .data import Box
    from .network import ENet
    from .trainer import predict_volume

    torch.manual_seed(0)
    model = ENet().to(device)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    box = None
    if box_side:
        x0, y0 = (shape[0] - box_side) // 2, (shape[1] - box_side) // 2
        box = Box(x0, x0 + box_side, y0, y0 + box_side)
    forward = None
    if compile:
        from .compiled import compiled_predictor

        forward = compiled_predictor(model)
    times = []
    t0 = time.perf_counter()
    predict_volume(model, image[..., :1], normalisation="auto", device=device, box=box, forward=forward,
                   tta=tta)  # warm-up
    if first_call is not None:
        first_call["s"] = time.perf_counter() - t0
    if compile and not forward.compiled:
        raise RuntimeError(f"torch.compile failed: {forward.failure}")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        predict_volume(model, image, normalisation="auto", device=device, box=box, forward=forward, tta=tta)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def enet_gflop(size: int = 256) -> dict:
    """Floating-point work of ENet on one ``size x size`` slice, in GFLOP (1 multiply-add = 2 FLOP).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions
    and matrix products; elementwise layers are not counted).

    Returns
    -------
    dict
        ``forward``: one slice, inference; ``train_step``: forward and
        backward of one slice at batch 1.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .network import ENet

    model = ENet()
    x = torch.rand(1, 1, size, size)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    forward = counter.get_total_flops()
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return {"forward": forward / 1e9, "train_step": counter.get_total_flops() / 1e9}


def _score(session, target, keep_connected: bool | None = None) -> float:
    """Mean 3D Dice over frames of ``session``'s mask (``keep_connected``: as :meth:`TrainingSession.predict`)."""
    from .metrics import dice_3d

    return float(np.mean(dice_3d(session.predict(keep_connected=keep_connected), target)))


def _train_round(session, target, steps_between: int, curve: list, offset: float = 0.0) -> float:
    """Run one round of ``session`` (its configured steps), scoring every ``steps_between`` steps.

    Scoring is not counted: the times in ``curve`` are training seconds since
    the round started (plus ``offset``). Returns the round's training time.
    """
    train_time = 0.0
    last_mark = time.perf_counter()
    for event in session.run():
        if event.kind.value == "done":
            train_time += time.perf_counter() - last_mark
            break
        if event.step % steps_between == 0:
            train_time += time.perf_counter() - last_mark
            curve.append((round(offset + train_time, 2), round(_score(session, target), 4)))
            last_mark = time.perf_counter()
    return train_time


def worst_slices(mask: np.ndarray, target: np.ndarray, n: int = 2) -> list[tuple[int, int]]:
    """The ``n`` slice-frames ``(z, t)`` with the most wrong pixels (false positives + false negatives).

    What a user sees and fixes first: the largest mistakes, including a blob
    on a slice where the target is absent.
    """
    pred, gt = np.asarray(mask) > 0, np.asarray(target) > 0
    wrong = (pred ^ gt).sum(axis=(0, 1))
    order = np.argsort(-wrong, axis=None, kind="stable")[:n]
    return [tuple(int(v) for v in np.unravel_index(i, wrong.shape)) for i in order if wrong.flat[i] > 0]


def correct_worst_slices(session, case, n: int = 2, fixed_bounds: bool = False):
    """The bench's simulated user corrects the ``n`` worst slices of ``session``'s mask of ``case``.

    Each corrected slice gets the true mask (full supervision); unless
    ``fixed_bounds``, the bounds are widened to admit every corrected
    slice's area (:func:`~napari_sizeloss.bounds.widen_to_admit`), as the
    widget's *Use corrections* does. Returns the corrected ``(z, t)`` and the
    bounds the session now trains with.
    """
    from .bounds import widen_to_admit

    worst = worst_slices(session.predict(), case.target, n)
    corrected = np.zeros(case.image.shape[2:], dtype=bool)
    for z, t in worst:
        corrected[z, t] = True
    bounds = case.bounds
    if not fixed_bounds:
        bounds = widen_to_admit(bounds, case.target[:, :, corrected].sum(axis=(0, 1)), case.phantom.spacing[:2])
    session.update(corrections=case.target.astype(np.uint8), corrected=corrected, bounds=bounds)
    return worst, bounds


def held_from(curve: list, level: float):
    """The first time of ``curve`` (``[(seconds, dice), ...]``) from which every later score is ``>= level``.

    None when the last score is below ``level``. Unlike the first crossing, a
    score that reaches the level and falls back does not count: this is when
    a user could have stopped training at any later moment and kept the level.
    """
    held = None
    for t, d in curve:
        if d < level:
            held = None
        elif held is None:
            held = t
    return held


def time_to_quality(device, *, steps=None, correction_steps=None, steps_between=25, seed=0,
                    threads=None, deadline_s=60.0, tags: str = "none", fixed_bounds: bool = False,
                    all_regions: bool = False, **config_overrides) -> dict:
    """The interactive session on the demo case, timed as a user lives it.

    Press Train with the interactive defaults (``steps`` overrides the
    budget) on the demo case (phantom, clicks on 3 slices of ED and ES),
    scoring the 3D Dice over all frames every ``steps_between`` steps
    (scoring is not counted as training time); then correct the two worst
    slices (their ground truth becomes full supervision, as a user's brush
    would) and train ``correction_steps`` more from the same weights (None:
    as many as the first round, as the widget's *Use corrections* trains its
    *Steps* setting; 100 in the bench before 2026-12-03).
    ``dice_at_60s`` is the last score within ``deadline_s`` of pressing Train.
    ``tags`` is how the simulated user tags target-absent slices before
    pressing Train (:func:`~napari_sizeloss.demo.absent_tags`; default none).
    As the widget's *Use corrections* does, the corrections round first
    widens the bounds to admit every corrected slice's area
    (:func:`~napari_sizeloss.bounds.widen_to_admit`); ``fixed_bounds`` keeps
    them as they were (the behaviour before 2026-12-02).
    ``all_regions`` (``keep_connected=False``): the user sees, corrects and is
    scored on every region the network predicts, not only those connected
    to a target dot; ``network_dice_*`` score every region either way.
    ``config_overrides`` go to :meth:`TrainConfig.interactive` (e.g. ``ema_decay=None``).
    """
    import resource

    from .demo import absent_tags, make_demo_case
    from .trainer import TrainConfig, TrainingSession

    case = make_demo_case(seed=seed)
    absent = absent_tags(case.target, tags, case.clicked_frames)
    if steps is not None:
        config_overrides["steps"] = steps
    if all_regions:
        config_overrides["keep_connected"] = False
    config = TrainConfig.interactive(device=str(device), seed=seed, preview_every=0, threads=threads,
                                     **config_overrides)
    session = TrainingSession(case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=config,
                              absent=absent)
    curve: list = []
    first_round_steps = config.steps
    spent = _train_round(session, case.target, steps_between, curve)
    if not curve or curve[-1][0] < spent - 1e-6:
        curve.append((round(spent, 2), round(_score(session, case.target), 4)))
    network_first = _score(session, case.target, keep_connected=False)
    first_085 = next((t for t, d in curve if d >= 0.85), None)
    held_085 = held_from(curve, 0.85)
    in_time = [d for t, d in curve if t <= deadline_s]
    # training images per second of training time (the session's own clock also runs while we score)
    rate = first_round_steps * config.batch_size / spent if spent > 0 else None

    worst, bounds = correct_worst_slices(session, case, fixed_bounds=fixed_bounds)
    if correction_steps is None:
        correction_steps = first_round_steps
    session.config.steps = correction_steps
    corr_curve: list = []
    corr_spent = _train_round(session, case.target, max(5, steps_between // 2), corr_curve, offset=spent)
    corr_curve.append((round(spent + corr_spent, 2), round(_score(session, case.target), 4)))
    network_corrected = _score(session, case.target, keep_connected=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "time_to_dice_085_s": first_085,
        "time_to_dice_085_held_s": held_085,
        "dice_at_60s": in_time[-1] if in_time else None,
        "first_round_steps": first_round_steps,
        "first_round_s": round(spent, 1),
        "dice_after_first_round": curve[-1][1],
        "network_dice_after_first_round": round(network_first, 4),
        "keep_connected": bool(config.keep_connected),
        "dice_curve": curve,
        "corrected_slices": [list(map(int, zt)) for zt in worst],
        "bounds_px": [round(case.bounds.lower, 1), round(case.bounds.upper, 1)],
        "bounds_px_after_corrections": [round(bounds.lower, 1), round(bounds.upper, 1)],
        "dice_after_corrections": corr_curve[-1][1],
        "network_dice_after_corrections": round(network_corrected, 4),
        "corrections_round_steps": correction_steps,
        "corrections_round_s": round(corr_spent, 1),
        "dice_curve_corrections": corr_curve,
        "peak_rss_mb": round(peak_mb, 1),
        "images_per_s": rate,
        "tags": tags,
        "absent_tags": int(absent.sum()),
    }


def compare_with_whole_slices(device, *, steps=300, seed=0, threads=None, tta: str | None = None) -> dict:
    """Interactive configuration against whole slices at batch 1 (the paper's), same number of steps.

    Both train the demo case from the same initialisation; the whole-slice run
    sees 1 image per step, the interactive one a batch of crops. Both are
    scored with the same test-time views (``tta``; None: the interactive default).
    """
    from .demo import make_demo_case
    from .trainer import TrainConfig, train

    case = make_demo_case(seed=seed)
    out = {}
    for name, overrides in (("interactive", {}), ("whole_b1", {"crop": None, "batch_size": 1})):
        if tta is not None:
            overrides = {**overrides, "tta": tta}
        config = TrainConfig.interactive(steps=steps, device=str(device), seed=seed, preview_every=0,
                                         threads=threads, **overrides)
        t0 = time.perf_counter()
        session = train(case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=config)
        seconds = time.perf_counter() - t0
        out[name] = {"dice": round(_score(session, case.target), 4), "seconds": round(seconds, 1),
                     "images_per_s": round(session.history[-1].images_per_s, 1)}
    out["steps"] = steps
    return out


def compiled_figures(device, *, quick: bool, reps: int, fast: bool, gflop: dict) -> dict:
    """The step and prediction figures again through ``torch.compile``, with each compile's seconds.

    A first call's seconds are the compile: cold (minutes on a CPU) or from
    inductor's on-disk cache (seconds), whichever this machine has.
    """
    from .device import uses_channels_last
    from .trainer import TrainConfig

    out: dict = {}
    print("through torch.compile (--compile; a first call's time is its compile, cold or cached):", flush=True)
    first: dict = {}
    ms = train_step_ms(device, size=256, batch=1, repeats=reps, channels_last=fast and uses_channels_last(device),
                       amp=fast, compile=True, first_step=first)
    out["train_step_ms_256_b1_compiled"] = round(ms, 2)
    out["compile_s_train_256_b1"] = round(first["s"], 1)
    print(f"  train step, 256x256, batch 1: {ms:.1f} ms (median of {reps}; "
          f"{gflop['train_step'] / (ms / 1000):.0f} GFLOP/s); first step {first['s']:.0f} s", flush=True)
    cfg = TrainConfig.interactive()
    crop, batch = cfg.crop, cfg.batch_size
    ms_b = train_step_ms(device, size=crop, batch=batch, repeats=reps, channels_last=fast, amp=fast,
                         compile=True, first_step=first)
    out["train_step_ms_interactive_compiled"] = round(ms_b, 2)
    out["train_images_per_s_interactive_compiled"] = round(batch / (ms_b / 1000), 1)
    out["compile_s_train_interactive"] = round(first["s"], 1)
    print(f"  train step, interactive ({crop}x{crop} crops, batch {batch}): {ms_b:.1f} ms = "
          f"{batch / (ms_b / 1000):.0f} images/s; first step {first['s']:.0f} s", flush=True)
    shape = (256, 256, 10, 25) if not quick else (256, 256, 10, 5)
    scale = 1 if not quick else 5
    s = predict_cine_s(device, shape=shape, repeats=1 if quick else 3, compile=True, first_call=first) * scale
    out["predict_cine_s_compiled"] = round(s, 2)
    out["compile_s_predict_256"] = round(first["s"], 1)
    note = " (extrapolated from 5 frames)" if quick else ""
    print(f"  predict a 256x256x10x25 cine volume, every pixel: {s:.2f} s{note} "
          f"({250 * gflop['forward'] / s:.0f} GFLOP/s); first call {first['s']:.0f} s", flush=True)
    return out


def run_bench(args) -> int:
    import torch

    from .device import select_device, uses_channels_last

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if args.compile:
        from .compiled import require_compile

        require_compile(device)  # one line, before minutes of measuring
    quick = args.quick
    if device.type == "cpu":
        from . import native_op

        native_op.start()
        if native_op.status().startswith(("building", "waiting")):  # measure what later runs get, not a build
            print("building ENet's C++ training operator (once, about 20 s; cached for later runs)...", flush=True)
            native_op.wait(timeout=600)
    info = machine_info(device)
    results: dict = {"machine": info, "quick": bool(quick)}
    print(f"machine: {info}", flush=True)
    fast = device.type == "cuda"  # mixed precision
    layout = uses_channels_last(device)  # channels-last, as the trainer lays out eager training
    reps = 5 if quick else 20
    from .trainer import TrainConfig

    cfg = TrainConfig.interactive(**({"tta": args.tta} if args.tta else {}))
    crop, batch = cfg.crop, cfg.batch_size
    settings = {
        "layout": "channels-last" if layout else "contiguous", "autocast": fast, "crop": crop, "batch": batch,
        "steps_per_round": cfg.steps, "lr": cfg.lr, "lr_decay": cfg.lr_decay, "ema_decay": cfg.ema_decay,
        "tta": cfg.tta,
    }
    results["settings"] = settings
    print(f"settings (the trainer's interactive defaults): {settings}", flush=True)

    ms = train_step_ms(device, size=256, batch=1, repeats=reps, channels_last=layout, amp=fast)
    results["train_step_ms_256_b1"] = round(ms, 2)
    print(f"train step, 256x256, batch 1 (paper configuration): {ms:.1f} ms (median of {reps})", flush=True)
    gflop = enet_gflop(256)
    results["gflop_train_step_256_b1"] = round(gflop["train_step"], 3)
    results["gflop_forward_256"] = round(gflop["forward"], 3)
    rate = gflop["train_step"] / (ms / 1000)
    results["train_step_gflop_per_s"] = round(rate, 1)
    print(f"  ENet work: {gflop['train_step']:.2f} GFLOP per step, {gflop['forward']:.2f} GFLOP per slice predicted; "
          f"the step ran at {rate:.0f} GFLOP/s", flush=True)

    ms_b = train_step_ms(device, size=crop, batch=batch, repeats=reps, channels_last=layout, amp=fast)
    ips = batch / (ms_b / 1000)
    results["train_step_ms_interactive"] = round(ms_b, 2)
    results["train_images_per_s_interactive"] = round(ips, 1)
    print(f"train step, interactive ({crop}x{crop} crops, batch {batch}): {ms_b:.1f} ms = {ips:.0f} images/s", flush=True)

    shape = (256, 256, 10, 25) if not quick else (256, 256, 10, 5)
    scale = 1 if not quick else 5
    note = " (extrapolated from 5 frames)" if quick else ""
    s = predict_cine_s(device, shape=shape, repeats=1 if quick else 3) * scale
    results["predict_cine_s"] = round(s, 2)
    rate = 250 * gflop["forward"] / s
    results["predict_gflop_per_s"] = round(rate, 1)
    print(f"predict a 256x256x10x25 cine volume, every pixel: {s:.2f} s{note} "
          f"({250 * gflop['forward']:.0f} GFLOP at {rate:.0f} GFLOP/s)", flush=True)
    s_roi = predict_cine_s(device, shape=shape, repeats=1 if quick else 3, box_side=crop) * scale
    results["predict_cine_roi_s"] = round(s_roi, 2)
    print(f"predict it inside a {crop}x{crop} region of interest (what the trainer does): {s_roi:.2f} s{note}", flush=True)
    if cfg.tta != "none":
        s_tta = predict_cine_s(device, shape=shape, repeats=1 if quick else 3, box_side=crop, tta=cfg.tta) * scale
        results["predict_cine_roi_tta_s"] = round(s_tta, 2)
        print(f"  ... averaged over the {cfg.tta} test-time views (what Predict shows after a round): "
              f"{s_tta:.2f} s{note}", flush=True)

    if args.compile:
        results.update(compiled_figures(device, quick=quick, reps=reps, fast=fast, gflop=gflop))

    tags = args.tags
    first_steps, correction_steps = round_steps(args)
    q = time_to_quality(device, steps=first_steps, correction_steps=correction_steps,
                        threads=args.threads, tags=tags, fixed_bounds=args.fixed_bounds, all_regions=args.all_regions,
                        tta=cfg.tta)
    results.update(q)
    t85, held = q["time_to_dice_085_s"], q["time_to_dice_085_held_s"]
    tagged = "" if tags == "none" else f", {q['absent_tags']} slice-frames tagged absent ({tags})"
    print(f"demo phantom, Train pressed with the interactive defaults ({q['first_round_steps']} steps, "
          f"{q['first_round_s']:.0f} s, {q['images_per_s']:.0f} images/s{tagged}):", flush=True)
    print(f"  time to 3D Dice 0.85: {'not reached' if t85 is None else f'{t85:.1f} s'}; "
          f"held from then to the round's end: {'no' if held is None else f'from {held:.1f} s'}", flush=True)
    print(f"  3D Dice within 60 s: {q['dice_at_60s']}; at the end of the round: {q['dice_after_first_round']}"
          f"{_network_note(q, 'after_first_round')}", flush=True)
    print(f"  after correcting the 2 worst slices {q['corrected_slices']}{_widened(q)} and "
          f"{q['corrections_round_steps']} more steps ({q['corrections_round_s']:.0f} s): "
          f"{q['dice_after_corrections']}{_network_note(q, 'after_corrections')}", flush=True)
    print(f"  peak memory (RSS): {q['peak_rss_mb']} MB", flush=True)
    if args.cases > 1:
        results["quality_by_case"] = quality_by_case(
            device, range(args.cases), first=q, steps=first_steps,
            correction_steps=correction_steps, threads=args.threads, tags=tags,
            fixed_bounds=args.fixed_bounds, all_regions=args.all_regions, tta=cfg.tta,
        )

    steps = 40 if quick else 300
    c = compare_with_whole_slices(device, steps=steps, threads=args.threads, tta=cfg.tta)
    results["same_steps_comparison"] = c
    for name, label in (("interactive", "interactive (crops, batch 8)"), ("whole_b1", "whole slices, batch 1")):
        r = c[name]
        print(f"{steps} steps, {label}: 3D Dice {r['dice']}, {r['seconds']} s, {r['images_per_s']} images/s", flush=True)
    if args.json:
        print(json.dumps(results))
    sys.stdout.flush()
    return 0


def _network_note(q: dict, when: str) -> str:
    """``" (every region the network predicts: 0.750)"`` when the scored masks kept connected regions only."""
    if not q.get("keep_connected", False):
        return ""
    return f" (every region the network predicts: {q['network_dice_' + when]})"


def _widened(q: dict) -> str:
    """``" (upper bound 676 -> 938 px)"`` when the corrections round widened the bounds, else ``""``."""
    (lo, hi), (lo2, hi2) = q["bounds_px"], q["bounds_px_after_corrections"]
    parts = [f"{name} bound {a:.0f} -> {b:.0f} px" for name, a, b in (("upper", hi, hi2), ("lower", lo, lo2)) if a != b]
    return f" ({', '.join(parts)})" if parts else ""


def quality_by_case(device, seeds, *, first: dict | None = None, steps=None, correction_steps=None,
                    threads=None, tags: str = "none", fixed_bounds: bool = False,
                    all_regions: bool = False, **config_overrides) -> list[dict]:
    """:func:`time_to_quality` on the demo cases of several seeds, printed one line each, then the ranges.

    A seed changes the phantom, its dots and the training's random streams;
    seed 0 is the bench's headline case (``first``: its result, not rerun).
    ``tags`` is the simulated user's absent tags, ``fixed_bounds`` keeps the
    bounds in the corrections round (both as :func:`time_to_quality`);
    ``all_regions`` shows, corrects and scores every region the network
    predicts, not only those connected to a target dot; ``config_overrides``
    go to :func:`time_to_quality` (e.g. ``tta="none"``).

    Returns
    -------
    list of dict
        Per seed: ``seed``, ``time_to_dice_085_s`` and ``time_to_dice_085_held_s``
        (None when not reached or not held), ``dice_at_60s``,
        ``dice_after_first_round``, ``dice_after_corrections``, the same two
        over every region the network predicts (``network_dice_*``),
        ``first_round_s``, ``bounds_px`` and ``bounds_px_after_corrections``.
    """
    keys = ("time_to_dice_085_s", "time_to_dice_085_held_s", "dice_at_60s", "dice_after_first_round",
            "dice_after_corrections", "network_dice_after_first_round", "network_dice_after_corrections",
            "first_round_s", "bounds_px", "bounds_px_after_corrections")
    rows = []
    print("the same session on other demo cases (phantom, dots and training seed):", flush=True)
    for seed in seeds:
        if seed == 0 and first is not None:
            q = first
        else:
            q = time_to_quality(device, steps=steps, correction_steps=correction_steps, seed=seed, threads=threads,
                                tags=tags, fixed_bounds=fixed_bounds, all_regions=all_regions, **config_overrides)
        row = {"seed": int(seed), **{k: q[k] for k in keys}}
        rows.append(row)
        t85, held = row["time_to_dice_085_s"], row["time_to_dice_085_held_s"]
        reached = "not reached" if t85 is None else f"after {t85:.1f} s"
        if t85 is not None:
            reached += " (not held)" if held is None else f" (held from {held:.1f} s)"
        print(f"  seed {seed}: Dice 0.85 {reached}, {row['dice_at_60s']} within 60 s, "
              f"{row['dice_after_corrections']} after corrections{_widened(q)}"
              f"{_network_note(q, 'after_corrections')}", flush=True)
    for key, label, level in (("dice_at_60s", "within 60 s", 0.85), ("dice_after_corrections", "after corrections", 0.90)):
        values = sorted(r[key] for r in rows)
        print(f"  3D Dice {label}: {values[0]}-{values[-1]} (median {round(statistics.median(values), 4)}) "
              f"over {len(rows)} seeds, {sum(v >= level for v in values)} at {level} or more", flush=True)
    if not all_regions:
        for key, label, level in (("network_dice_after_first_round", "at the first round's end", 0.85),
                                  ("network_dice_after_corrections", "after corrections", 0.90)):
            values = sorted(r[key] for r in rows)
            print(f"  every region the network predicts, {label}: {values[0]}-{values[-1]} (median "
                  f"{round(statistics.median(values), 4)}), {sum(v >= level for v in values)} at {level} or more",
                  flush=True)
    held = sum(r["time_to_dice_085_held_s"] is not None for r in rows)
    print(f"  3D Dice 0.85 reached and held to the round's end: {held} of {len(rows)} seeds", flush=True)
    return rows


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def round_steps(args) -> tuple[int | None, int | None]:
    """The time-to-quality session's (first round, corrections round) steps from bench's arguments.

    ``--steps`` (default: the interactive default, 300; 60 with ``--quick``)
    and ``--correction-steps`` (default: as many as the first round; 20 with
    ``--quick``). None leaves the choice to :func:`time_to_quality`.
    """
    first = args.steps or (60 if args.quick else None)
    corrections = args.correction_steps or (20 if args.quick else None)  # None: as many as the first round
    return first, corrections


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure training and prediction speed on this machine")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--quick", action="store_true", help="fewer repeats, 60+20-step quality run, 40-step comparison")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true",
                   help="also measure the torch.compile'd step and prediction (and their compile times; "
                        "minutes on a CPU the first time)")
    p.add_argument("--cases", type=_positive_int, default=1, metavar="N",
                   help="run the time-to-quality session on N demo cases (seeds 0..N-1: phantom, dots, training) "
                        "and print the range (about a minute each; default 1: seed 0 only)")
    p.add_argument("--tags", choices=TAG_STRATEGIES, default="none",
                   help="how the simulated user of the time-to-quality session tags target-absent slices before "
                        "Train: none (default), on the frames it clicks (clicked-frames), or every slice-frame "
                        "without the target (every-frame, the paper's image-level tags)")
    p.add_argument("--fixed-bounds", action="store_true",
                   help="keep the bounds in the corrections round even where a corrected slice lies outside them "
                        "(by default the simulated user's bounds are widened to admit it, as the widget's "
                        "Use corrections does)")
    p.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                   help="steps of the time-to-quality session's first round (default: the interactive default, "
                        "300, as the widget's Advanced > Steps; 60 with --quick)")
    p.add_argument("--correction-steps", type=_positive_int, default=None, metavar="N",
                   help="steps of the corrections round (default: as many as the first round, 300, as the "
                        "widget's Use corrections trains its Advanced > Steps; 100 before 2026-12-03; 20 with --quick)")
    p.add_argument("--all-regions", action="store_true",
                   help="the simulated user sees, corrects and is scored on every region the network predicts "
                        "(by default, as in the widget, only the regions connected to a target dot)")
    p.add_argument("--tta", choices=TTA_MODES, default=None,
                   help="test-time views of the sessions' predictions (default: the interactive default, "
                        "flips; none: one forward pass per slice, as the figures before 2026-12-06's second session)")
    p.set_defaults(func=run_bench)
