"""The main job on the embedded default: the synthetic cine phantom.

What a user does in the plugin, scripted: a few dots in the LV cavity on a few
slices of two frames (end-diastole and end-systole), size bounds from *another*
annotated subject (the paper's one-subject recipe), training, prediction, and
the 3D Dice of the prediction against the phantom's ground truth over all
frames. ``--compare`` trains a second network without the size penalty on the
same budget; ``--cases N`` runs N phantoms (seeds ``--seed`` onwards) and
summarises them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The ACDC label of the left-ventricle cavity, the demo's target.
LV_CAVITY = 3


@dataclass
class DemoCase:
    """A phantom with simulated clicks and bounds from another subject."""

    image: np.ndarray  # float32 (X, Y, Z, T)
    target: np.ndarray  # bool (X, Y, Z, T)
    seeds: np.ndarray  # uint8 (X, Y, Z, T)
    bounds: object  # SizeBounds, px
    phantom: object  # CinePhantom
    clicked_slices: list[int]
    clicked_frames: list[int]


#: The simulated user: per clicked slice, target dots inside the cavity and
#: background dots on the wall around it (2-8 px out), radius 1 px.
TARGET_DOTS = 3
BACKGROUND_DOTS = 2
BACKGROUND_MARGIN = 2
BACKGROUND_WITHIN = 8.0


def demo_slices(target: np.ndarray, frames, n: int = 3) -> list[int]:
    """``n`` slices spread over those where the target is present in every one of ``frames``.

    ``target`` is bool (X, Y, Z, T); the ends are left out (a user clicks
    where the target is clearly visible, not on the first or last slice).
    """
    Z = target.shape[2]
    ok = [z for z in range(Z) if all(target[:, :, z, t].any() for t in frames)]
    if len(ok) <= n:
        return ok
    picks = np.linspace(0, len(ok) - 1, n + 2)[1:-1].round().astype(int)
    return sorted({ok[i] for i in picks})


#: How the simulated user tags target-absent slices (:func:`absent_tags`):
#: ``none``: never; ``clicked-frames``: on the frames they click (ED and ES),
#: each slice without the target; ``every-frame``: each slice-frame without it,
#: as the paper's image-level tags (taken from the ground truth there).
TAG_STRATEGIES = ("none", "clicked-frames", "every-frame")


def absent_tags(target: np.ndarray, strategy: str, frames=None) -> np.ndarray:
    """The slice-frames a simulated user tags target-absent, bool ``(Z, T)``.

    ``target`` is the ground truth, bool ``(X, Y, Z, T)``. ``strategy`` is one
    of :data:`TAG_STRATEGIES`; ``clicked-frames`` needs ``frames`` (the frames
    the user annotates) and tags, on those frames only, the slices where the
    target has no pixel. The other frames stay untagged (bounds ``[0, upper]``).
    """
    target = np.asarray(target, dtype=bool)
    if target.ndim != 4:
        raise ValueError(f"target must be (X, Y, Z, T), got shape {target.shape}")
    absent = ~target.any(axis=(0, 1))
    if strategy == "every-frame":
        return absent
    tags = np.zeros_like(absent)
    if strategy == "none":
        return tags
    if strategy != "clicked-frames":
        raise ValueError(f"tag strategy must be one of {', '.join(TAG_STRATEGIES)}, got {strategy!r}")
    if frames is None:
        raise ValueError("the clicked-frames strategy needs the clicked frames")
    frames = list(frames)
    tags[:, frames] = absent[:, frames]
    return tags


def make_demo_case(seed: int = 0, shape=None, k: int = TARGET_DOTS, background_k: int = BACKGROUND_DOTS,
                   n_slices: int = 3) -> DemoCase:
    """The phantom of ``seed``; clicks on ``n_slices`` slices of ED and ES; bounds from subject ``seed + 1``.

    Per clicked slice: ``k`` target dots in the LV cavity and ``background_k``
    background dots on the tissue 2-8 px around it (where a network without
    them leaks), all of radius 1 px (the ``clicks`` strategy of
    :func:`~napari_sizeloss.weak_labels.click_seeds`).
    """
    from .bounds import bounds_from_annotation
    from .phantom import make_cine_phantom
    from .weak_labels import click_seeds

    kwargs = {} if shape is None else {"shape": tuple(shape)}
    ph = make_cine_phantom(seed=seed, **kwargs)
    other = make_cine_phantom(seed=seed + 1, **kwargs)
    bounds = bounds_from_annotation(other.labels, LV_CAVITY)
    target = ph.labels == LV_CAVITY
    frames = sorted({ph.ed_frame, ph.es_frame})
    slices = demo_slices(target, frames, n_slices)
    seeds = click_seeds(
        target, k=k, radius=1, slices=slices, frames=frames, rng=seed, background_k=background_k,
        background_margin=BACKGROUND_MARGIN, background_within=BACKGROUND_WITHIN if background_k else None,
    )
    return DemoCase(ph.image, target, seeds, bounds, ph, slices, frames)


def run_case(case: DemoCase, *, size_weight: float, steps: int, device: str = "auto",
             threads: int | None = None, seed: int = 0, log=None, absent=None, tta: str | None = None):
    """Train on ``case``; returns (session, mask, mean 3D Dice over frames, seconds, the network's own Dice).

    ``mask`` keeps the regions connected to a target dot (the tool's output,
    :func:`~napari_sizeloss.connectivity.keep_connected`); the last value
    scores every region the network predicts. ``absent``: bool ``(Z, T)``
    slice-frames tagged target-absent (None: none). ``tta``: the test-time
    views of the prediction (None: the interactive default).
    """
    from .connectivity import keep_connected
    from .metrics import dice_3d
    from .trainer import TrainConfig, train

    config = TrainConfig.interactive(
        steps=steps, size_weight=size_weight, device=device, threads=threads, seed=seed, preview_every=0,
        **({} if tta is None else {"tta": tta}),
    )
    start = time.perf_counter()
    session = train(
        case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=config, callback=log,
        absent=absent,
    )
    seconds = time.perf_counter() - start
    network_mask = session.predict(keep_connected=False)  # one prediction, scored with and without the filter
    mask = keep_connected(network_mask, session.anchors()).astype(np.uint8)
    dice = float(np.mean(dice_3d(mask, case.target)))
    network_dice = float(np.mean(dice_3d(network_mask, case.target)))
    return session, mask, dice, seconds, network_dice


def run_demo(args) -> int:
    """``napari-sizeloss demo``: one case (``--seed``), or ``--cases N`` of them (seeds ``seed..seed+N-1``)."""
    cases = int(getattr(args, "cases", 1))
    if cases < 1:
        raise ValueError(f"--cases must be at least 1, got {cases}")
    seeds = list(range(args.seed, args.seed + cases))
    folders = {}
    if args.out:
        folders = {seed: Path(args.out) if cases == 1 else Path(args.out) / f"seed-{seed}" for seed in seeds}
        # before any training: a bad --out fails in a second, not after minutes
        for folder in folders.values():
            check_output_folder(folder)
        for folder in folders.values():
            make_output_folder(folder)
    runs = [("CE + size penalty", 1e-2)]
    if args.compare:
        runs.append(("CE only", 0.0))
    results = []  # (seed, name, dice, network_dice, seconds)
    for seed in seeds:
        results += _demo_case(args, seed, runs, folders.get(seed))
    print()
    seed_column = "| seed " if cases > 1 else ""
    print(f"{seed_column}| training | 3D Dice (all frames) | every region the network predicts | seconds |")
    print(("|---" if cases > 1 else "") + "|---|---|---|---|")
    for seed, name, dice, network_dice, seconds in results:
        prefix = f"| {seed} " if cases > 1 else ""
        print(f"{prefix}| {name} | {dice:.3f} | {network_dice:.3f} | {seconds:.0f} |")
    print("(3D Dice: the regions connected to a target dot, as the plugin and `train --pred` write them)")
    if cases > 1:
        for name, _ in runs:
            print(summary_line(name, [r[2] for r in results if r[1] == name],
                               [r[3] for r in results if r[1] == name]))
    sys.stdout.flush()
    return 0


def summary_line(name: str, dice: list[float], network_dice: list[float], level: float = 0.85) -> str:
    """One line over cases: the range, median and count at ``level`` or more, filtered and every region."""
    def part(values):
        v = np.asarray(values, dtype=float)
        return (f"{v.min():.3f}-{v.max():.3f} (median {np.median(v):.3f}), "
                f"{int((v >= level).sum())} of {v.size} at {level} or more")

    return f"{name}: 3D Dice {part(dice)}; every region the network predicts: {part(network_dice)}"


def _demo_case(args, seed: int, runs, out: Path | None) -> list[tuple]:
    """Train ``runs`` (name, size weight) on the case of ``seed``; returns one result row per run."""
    from .cli import _progress_printer
    from .weak_labels import SEED_BACKGROUND, SEED_TARGET, dot_centres

    case = make_demo_case(seed=seed)
    X, Y, Z, T = case.image.shape
    n_target = len(dot_centres(case.seeds, SEED_TARGET))
    n_background = len(dot_centres(case.seeds, SEED_BACKGROUND))
    print(
        f"phantom seed {seed}: {X}x{Y} px, {Z} slices, {T} frames; {n_target} target and "
        f"{n_background} background dots on slices {case.clicked_slices} of frames {case.clicked_frames}"
    )
    print(f"bounds from subject {seed + 1} (paper recipe): "
          f"{case.bounds.lower:.0f}-{case.bounds.upper:.0f} px per slice")
    absent = absent_tags(case.target, args.tags, case.clicked_frames)
    if args.tags != "none":
        print(f"{int(absent.sum())} slice-frames tagged target-absent ({args.tags})")
    rows = []
    for name, weight in runs:
        print(f"training: {name}, {args.steps} steps", flush=True)
        session, mask, dice, seconds, network_dice = run_case(
            case, size_weight=weight, steps=args.steps, device=args.device, threads=args.threads,
            seed=seed, log=_progress_printer(args.steps), absent=absent, tta=getattr(args, "tta", None),
        )
        rows.append((seed, name, dice, network_dice, seconds))
        if out is not None and weight > 0:
            _write_outputs(out, case, session, mask)
    return rows


#: What ``demo --out DIR`` writes into DIR.
OUTPUT_FILES = ("image.nii.gz", "gt.nii.gz", "seeds.nii.gz", "pred.nii.gz", "model.ckpt")


def check_output_folder(folder: Path) -> None:
    """Raise ValueError (one line) when ``folder`` cannot take the demo's outputs; creates nothing.

    Refuses a path that is a file, and a folder that already holds a file
    the demo would write: it never replaces a file it did not make in this
    run (an ``image.nii.gz`` there may be someone's scan).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot write the demo's outputs to {folder}: it is a file")
    taken = [name for name in OUTPUT_FILES if (folder / name).exists()]
    if taken:
        raise ValueError(f"{folder} already holds {', '.join(taken)}: give --out a new or empty folder")


def make_output_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) and check a file can be written in it; ValueError in one line."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".napari-sizeloss-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"cannot write the demo's outputs to {folder}: {exc.strerror or exc}") from None


def _write_outputs(out: Path, case: DemoCase, session, mask) -> None:
    from .nifti import load_nifti, save_mask

    out.mkdir(parents=True, exist_ok=True)
    image_img, labels_img = case.phantom.to_nifti()
    from .nifti import atomic_save

    atomic_save(image_img, out / "image.nii.gz")
    atomic_save(labels_img, out / "gt.nii.gz")
    ref = load_nifti(out / "image.nii.gz")
    save_mask(out / "seeds.nii.gz", case.seeds, ref)
    save_mask(out / "pred.nii.gz", mask, ref)
    session.save(out / "model.ckpt")
    print(f"wrote image, gt (the phantom's labels: 1 right-ventricle cavity, 2 left-ventricle "
          f"myocardium, {LV_CAVITY} left-ventricle cavity, the target), seeds, pred and model to {out}/")
