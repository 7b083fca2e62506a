"""Reproduce the protocol of the paper's Table 1: ``napari-sizeloss reproduce``.

Every method of Table 1 (plus the log-barrier follow-up) is trained from
scratch on the same training patients, with the same initial weights, data
order and budget, and scored on the same validation patients.

Protocol
--------
Data
    An ACDC-layout folder (:mod:`napari_sizeloss.acdc`), or without one a
    cohort of synthetic phantoms (:func:`napari_sizeloss.acdc.phantom_cohort`).
    Each patient gives its ED and ES frame volumes; patients (never frames)
    are split into training and validation with a fixed seed. Slices are
    brought to a ``size x size`` grid (the paper stretches them to 256x256:
    ``--resample resize``; ``--resample spacing`` keeps a fixed pixel size)
    and predictions back to each volume's native grid for scoring.
Weak labels
    The paper's erosion of the full target mask on the network grid
    (:func:`napari_sizeloss.weak_labels.erosion_weak_labels`), with
    ``round(10 * size / 256)`` erosions so the seed keeps the same share of
    the structure at any grid size. Only target pixels are labelled.
Tags
    A slice is "target present" when the ground truth has the target on it
    (as the paper and its reference code do: an oracle).
Bounds
    Tight: the paper's recipe (:func:`napari_sizeloss.bounds.bounds_from_annotation`)
    on ONE training patient (the first in sorted order, ED and ES slices
    together), in mm^2, converted to network pixels per volume with the
    network pixel area. Loose: 10000 px of 256^2 (a share 10000/65536 of the
    image) for the size loss, one sixth of the image for the proposals.
    Slices tagged absent get ``[0, 0]``; one-bound methods use ``[0, upper]``
    on present slices.
Training
    ENet from scratch, Adam, lr 5e-3 halved once half the epochs are done
    (the paper: after 100 of 200), size-loss weight 1e-2, the quadratic
    penalty of :func:`napari_sizeloss.losses.size_penalty` divided by the
    image area ``size * size`` as the authors' code does; the log-barrier
    (:func:`napari_sizeloss.losses.log_barrier`) on ``S <= upper`` and, where
    ``lower > 0``, on ``S >= lower`` (a zero lower bound is no constraint), with
    ``t = 5 * 1.1 ** epoch`` and constraint values in units of ``size`` pixels. No
    augmentation (the reference's ACDC recipe has none). The model after the
    last epoch is scored: no selection on the validation set (the best epoch
    is shown beside it, marked as optimistic).
Scores
    3D Dice per validation volume (mean and standard deviation over volumes)
    and 2D Dice per slice (an empty prediction on an empty slice scores 1),
    both on the native grid, and the training time per image (forward, loss,
    proposals where used, backward and update; evaluation excluded).

Outputs (in ``--out``): ``methods/<method>.json`` (written as soon as a
method finishes; a rerun with the same settings skips finished methods),
``results.md``, ``per_volume.csv`` and ``dice_per_epoch.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .acdc import (
    LV_CAVITY,
    CardiacVolume,
    PreparedVolume,
    find_patients,
    load_acdc,
    phantom_cohort,
    prepare_volume,
    split_patients,
)
from .proposals import PAPER_MAX_ITER, dual_lr, proposal_mask

__all__ = [
    "METHODS",
    "BUDGETS",
    "Method",
    "ReproduceConfig",
    "MethodResult",
    "ReproduceError",
    "run_reproduction",
    "add_reproduce_parser",
    "run_reproduce",
]

#: Loose upper bound of the size loss in the paper: 10000 px of a 256x256 image.
LOOSE_SIZE_SHARE = 10000.0 / (256 * 256)
#: Loose upper bound of the proposals in the paper: one sixth of the image.
LOOSE_PROPOSALS_SHARE = 1.0 / 6.0
#: Size-loss weight of the paper.
SIZE_WEIGHT = 1e-2
#: Log-barrier t at epoch 0 and its growth per epoch (Kervadec et al. 2019).
BARRIER_T0, BARRIER_GROWTH = 5.0, 1.1
#: Erosions of a 3x3 square for the weak labels at 256x256 (the paper's recipe).
EROSIONS_AT_256 = 10
RESULTS_VERSION = 1


class ReproduceError(ValueError):
    """A reproduction cannot run as asked; the message names the option or file at fault."""


# ------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes
    ----------
    key : str
        Name on the command line and in file names.
    label : str
        Row label in ``results.md``.
    loss : {"partial-ce", "proposals", "size", "full"}
        What is fitted.
    bounds : {"none", "loose-size", "loose-proposals", "tight-upper", "tight"}
        Which size bounds present slices get (absent slices always ``[0, 0]``).
    penalty : {"quadratic", "log-barrier"}
        Size penalty of ``loss="size"``.
    paper : float or None
        The paper's Table 1 DSC on ACDC for this row (None: not in the paper).
    """

    key: str
    label: str
    loss: str
    bounds: str = "none"
    penalty: str = "quadratic"
    paper: float | None = None


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("ce", "Partial cross-entropy (weak labels only)", "partial-ce", paper=0.0721),
        Method("proposals-loose", "Proposals, loose bound (1/6 of the image)", "proposals", "loose-proposals", paper=0.6124),
        Method("proposals-tight", "Proposals, tight bounds", "proposals", "tight", paper=0.0659),
        Method("size-upper-loose", "CE + size loss, one bound, loose (10000 px at 256^2)", "size", "loose-size", paper=0.8107),
        Method("size-upper-tight", "CE + size loss, one bound, tight", "size", "tight-upper", paper=0.8189),
        Method("size-two", "CE + size loss, two bounds", "size", "tight", paper=0.8415),
        Method("logbarrier-two", "CE + log-barrier, two bounds", "size", "tight", penalty="log-barrier"),
        Method("full", "Full supervision", "full", paper=0.9284),
    )
}


# ------------------------------------------------------------------ budgets
#: Presets of ``--budget``; explicit options override them. Times are for all
#: eight methods on one CPU thread of the development machine.
BUDGETS: dict[str, dict[str, object]] = {
    # 3.5 minutes (measured): tiny phantoms on a 64x64 grid
    "quick": dict(epochs=20, size=64, batch_size=4, phantoms=8, phantom_shape=(96, 84, 8, 10)),
    # roughly 25 minutes (estimated from step timings; the default)
    "standard": dict(epochs=30, size=96, batch_size=4, phantoms=12, phantom_shape=(128, 112, 10, 10)),
    # the paper's settings: 256x256, batch 1, 200 epochs (a GPU is advisable)
    "paper": dict(epochs=200, size=256, batch_size=1, phantoms=100, phantom_shape=(192, 168, 10, 20)),
}
DEFAULT_BUDGET = "standard"


@dataclass
class ReproduceConfig:
    """Settings of one reproduction; everything that changes results is in here.

    Attributes
    ----------
    data : str or None
        ACDC-layout folder; None: a phantom cohort of ``phantoms`` subjects of
        shape ``phantom_shape`` (X, Y, Z, T).
    label : int
        Target label value (3: LV cavity).
    epochs : int
        Passes over the training slices (lr halved after ``epochs // 2``).
    val_patients : int or None
        Validation patients; None: a quarter of the patients (the paper's
        25 of 100), at least one.
    methods : tuple of str
        Keys of :data:`METHODS`, run in this order.
    seed : int
        Split, initial weights, data order and phantoms.
    size : int
        Network grid side in pixels.
    batch_size : int
        Slices per step (the paper: 1).
    slices_per_epoch : int or None
        Train on a random subset of this many slices per epoch (None: all).
    resample : {"resize", "spacing"}
        How slices reach the network grid (see :mod:`napari_sizeloss.acdc`).
    target_spacing : float or None
        Network pixel size (mm) for ``resample="spacing"``.
    lr : float
        Initial Adam learning rate.
    size_weight : float
        Weight of the size penalty.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``; does not enter the fingerprint.
    compile : bool
        Train through ``torch.compile`` (:mod:`napari_sizeloss.compiled`):
        faster steps after a compile per method. The same computation, so,
        like the device, it does not enter the fingerprint; but the fused
        kernels round differently, and over hundreds of steps a run drifts
        from the eager run of the same seed as it would on another device.
    """

    data: str | None = None
    label: int = LV_CAVITY
    epochs: int = 30
    val_patients: int | None = None
    methods: tuple[str, ...] = tuple(METHODS)
    seed: int = 0
    size: int = 96
    batch_size: int = 4
    slices_per_epoch: int | None = None
    resample: str = "resize"
    target_spacing: float | None = None
    phantoms: int = 12
    phantom_shape: tuple[int, int, int, int] = (128, 112, 10, 10)
    lr: float = 5e-3
    size_weight: float = SIZE_WEIGHT
    device: str = "auto"
    compile: bool = False

    def validate(self) -> None:
        """Raise :class:`ReproduceError` for impossible settings."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ReproduceError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise ReproduceError("no method selected")
        if self.epochs < 1:
            raise ReproduceError(f"--epochs must be >= 1; got {self.epochs}")
        if self.batch_size < 1:
            raise ReproduceError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.size < 16:
            raise ReproduceError(f"--size must be >= 16; got {self.size}")
        if self.slices_per_epoch is not None and self.slices_per_epoch < 1:
            raise ReproduceError(f"--slices-per-epoch must be >= 1; got {self.slices_per_epoch}")
        if self.data is None and self.phantoms < 2:
            raise ReproduceError(f"--phantoms must be >= 2 (training and validation); got {self.phantoms}")
        if self.resample not in ("resize", "spacing"):
            raise ReproduceError(f"--resample must be 'resize' or 'spacing'; got {self.resample!r}")
        if self.resample == "spacing" and not (self.target_spacing and self.target_spacing > 0):
            raise ReproduceError("--resample spacing needs --target-spacing MM > 0")

    def fingerprint(self) -> dict[str, object]:
        """The settings that change a method's result (methods and device excluded)."""
        out = dataclasses.asdict(self)
        out.pop("methods")
        out.pop("device")
        out.pop("compile")
        out["data"] = str(Path(self.data).resolve()) if self.data else None
        out["phantom_shape"] = list(self.phantom_shape)
        if self.data:
            out.pop("phantoms")
            out.pop("phantom_shape")
        return out


# --------------------------------------------------------------- the data
@dataclass
class Experiment:
    """Training slices on the network grid and validation volumes.

    Attributes
    ----------
    images : torch.Tensor
        float32 ``(N, 1, S, S)`` training slices.
    full : torch.Tensor
        uint8 ``(N, S, S)`` 0/1 ground truth (full supervision); int8 and
        uint8 keep a 256x256 cohort small, batches are cast to int64.
    weak : torch.Tensor
        int8 ``(N, S, S)``: 1 on the eroded target, -1 elsewhere (unlabelled).
    present : np.ndarray
        bool ``(N,)`` image tags.
    pixel_area : np.ndarray
        float ``(N,)`` mm^2 per network pixel of each slice's volume.
    val : list of PreparedVolume
        Validation frame volumes.
    train_subjects, val_subjects : list of str
    bound_subject : str
        The training patient the tight bounds come from.
    tight_mm2 : tuple of float
        Tight (lower, upper) in mm^2.
    """

    images: torch.Tensor
    full: torch.Tensor
    weak: torch.Tensor
    present: np.ndarray
    pixel_area: np.ndarray
    val: list[PreparedVolume]
    train_subjects: list[str]
    val_subjects: list[str]
    bound_subject: str
    tight_mm2: tuple[float, float]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def slice_bounds(self, method: Method) -> tuple[np.ndarray, np.ndarray]:
        """Per-slice (lower, upper) in network pixels, float64 ``(N,)`` each."""
        n = len(self.present)
        area = float(self.size * self.size)
        if method.bounds == "none":
            return np.zeros(n), np.full(n, area)
        lower_px = self.tight_mm2[0] / self.pixel_area
        upper_px = self.tight_mm2[1] / self.pixel_area
        if method.bounds == "loose-size":
            lower, upper = np.zeros(n), np.full(n, LOOSE_SIZE_SHARE * area)
        elif method.bounds == "loose-proposals":
            lower, upper = np.zeros(n), np.full(n, LOOSE_PROPOSALS_SHARE * area)
        elif method.bounds == "tight-upper":
            lower, upper = np.zeros(n), upper_px
        elif method.bounds == "tight":
            lower, upper = lower_px, upper_px
        else:  # pragma: no cover - METHODS is fixed
            raise ValueError(f"unknown bounds {method.bounds!r}")
        lower = np.where(self.present, np.minimum(lower, area), 0.0)
        upper = np.where(self.present, np.minimum(upper, area), 0.0)
        return lower, upper


def load_cohort(config: ReproduceConfig) -> dict[str, list[CardiacVolume]]:
    """The patients of ``config.data``, or a phantom cohort without it."""
    if config.data:
        return load_acdc(config.data)
    return phantom_cohort(config.phantoms, seed=config.seed, shape=tuple(config.phantom_shape))


def build_experiment(cohort: dict[str, list[CardiacVolume]], config: ReproduceConfig) -> Experiment:
    """Split, resample, erode and compute the tight bounds (see the module docstring)."""
    from .bounds import bounds_from_annotation
    from .weak_labels import erosion_weak_labels

    subjects = list(cohort)
    if len(subjects) < 2:
        raise ReproduceError(f"need at least 2 patients to split; found {len(subjects)}")
    val_count = config.val_patients if config.val_patients is not None else max(1, round(len(subjects) / 4))
    train_ids, val_ids = split_patients(subjects, val_count, seed=config.seed)

    def prepare(volume: CardiacVolume) -> PreparedVolume:
        return prepare_volume(volume, config.label, config.size, config.resample, config.target_spacing)

    train = [prepare(v) for s in train_ids for v in cohort[s]]
    val = [prepare(v) for s in val_ids for v in cohort[s]]
    if not any(v.native_target.any() for v in train):
        raise ReproduceError(f"label {config.label} is absent from every training volume")

    bound_subject = next(s for s in train_ids if any((v.labels == config.label).any() for v in cohort[s]))
    ref = cohort[bound_subject]
    stacked = np.concatenate([np.asarray(v.labels) for v in ref], axis=2)
    bounds = bounds_from_annotation(stacked, config.label, spacing=ref[0].spacing)
    tight = _bounds_mm2(bounds, ref[0].spacing)

    erosions = max(1, round(EROSIONS_AT_256 * config.size / 256))
    images = np.concatenate([v.images for v in train])[:, None]
    full = np.concatenate([v.target for v in train])
    weak_mask = erosion_weak_labels(np.moveaxis(full, 0, -1), iterations=erosions)
    weak = np.where(np.moveaxis(weak_mask, -1, 0), 1, -1)
    present = np.concatenate([v.present for v in train])
    pixel_area = np.concatenate([np.full(v.images.shape[0], v.geometry.pixel_area_mm2) for v in train])
    return Experiment(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
        full=torch.from_numpy(full.astype(np.uint8)),
        weak=torch.from_numpy(weak.astype(np.int8)),
        present=present,
        pixel_area=pixel_area,
        val=val,
        train_subjects=train_ids,
        val_subjects=val_ids,
        bound_subject=bound_subject,
        tight_mm2=tight,
    )


def _bounds_mm2(bounds, spacing) -> tuple[float, float]:
    """(lower, upper) in mm^2 of a :class:`~napari_sizeloss.bounds.SizeBounds`."""
    if bounds.unit != "mm2":
        bounds = bounds.to_mm2(tuple(spacing[:2]))
    return float(bounds.lower), float(bounds.upper)


# ----------------------------------------------------------------- training
@dataclass
class MethodResult:
    """What one method produced (also its ``methods/<key>.json``).

    Attributes
    ----------
    method : str
    epochs : list of dict
        Per epoch: ``epoch`` (1-based), ``loss``, ``dice3d`` and ``dice2d``
        (validation means), ``seconds`` (training time of the epoch), and
        ``below_lower`` / ``above_upper``: the share of training slices with
        a lower bound > 0 / an upper bound > 0 (target-present slices) whose
        soft predicted size was below / above it when seen in that epoch
        (None without bounds).
    per_volume : list of dict
        After the last epoch: ``volume``, ``subject``, ``phase``, ``dice3d``,
        ``dice2d`` (mean over the volume's slices).
    dice3d_mean, dice3d_std : float
        Over validation volumes (population standard deviation).
    dice2d_mean : float
        Over all validation slices.
    ms_per_image : float
        Training time per image (ms).
    fingerprint : dict
        :meth:`ReproduceConfig.fingerprint` of the run.
    """

    method: str
    epochs: list[dict] = field(default_factory=list)
    per_volume: list[dict] = field(default_factory=list)
    dice3d_mean: float = float("nan")
    dice3d_std: float = float("nan")
    dice2d_mean: float = float("nan")
    ms_per_image: float = float("nan")
    fingerprint: dict = field(default_factory=dict)
    device: str = ""

    @property
    def best_epoch(self) -> tuple[int, float]:
        """(epoch, validation 3D Dice) of the best epoch (optimistic: chosen on validation)."""
        best = max(self.epochs, key=lambda e: e["dice3d"])
        return int(best["epoch"]), float(best["dice3d"])

    def to_json(self) -> dict:
        return {"version": RESULTS_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, payload: dict) -> "MethodResult":
        payload = dict(payload)
        payload.pop("version", None)
        return cls(**payload)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool arrays; 1 when both are empty."""
    from .metrics import dice

    return float(dice(pred, truth))


def evaluate(model: torch.nn.Module, volumes: Sequence[PreparedVolume], device: torch.device) -> list[dict]:
    """Score ``model`` on validation volumes, on their native grids.

    Returns
    -------
    list of dict
        Per volume: ``volume``, ``subject``, ``phase``, ``dice3d``, ``dice2d``
        (mean over slices) and ``dice2d_slices`` (list, one per slice).
    """
    from .metrics import dice_2d, dice_3d

    model.eval()
    rows = []
    with torch.no_grad():
        for vol in volumes:
            x = torch.from_numpy(vol.images[:, None]).to(device)
            probs = torch.softmax(model(x).float(), dim=1)[:, 1].cpu()
            mask = vol.native_mask(probs)
            per_slice = np.asarray(dice_2d(mask, vol.native_target), dtype=float).reshape(-1)
            rows.append(
                {
                    "volume": vol.name,
                    "subject": vol.subject,
                    "phase": vol.name.rsplit("_", 1)[-1],
                    "dice3d": float(np.asarray(dice_3d(mask, vol.native_target)).mean()),
                    "dice2d": float(per_slice.mean()),
                    "dice2d_slices": per_slice.tolist(),
                }
            )
    model.train()
    return rows


def _summary(rows: list[dict]) -> tuple[float, float, float]:
    d3 = np.array([r["dice3d"] for r in rows])
    d2 = np.concatenate([np.asarray(r["dice2d_slices"]) for r in rows])
    return float(d3.mean()), float(d3.std()), float(d2.mean())


def _method_loss(
    method: Method,
    logits: torch.Tensor,
    weak: torch.Tensor,
    full: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    epoch: int,
    config: ReproduceConfig,
) -> torch.Tensor:
    """The training loss of ``method`` for one batch (see the module docstring).

    ``logits`` (B, 2, S, S); ``weak``/``full`` int64 (B, S, S); ``lower`` and
    ``upper`` float (B,) in network pixels.
    """
    from .losses import log_barrier, partial_cross_entropy, size_penalty, soft_size

    logits = logits.float()
    if method.loss == "full":
        return partial_cross_entropy(logits, full)
    if method.loss == "partial-ce":
        return partial_cross_entropy(logits, weak)
    size = logits.shape[-1]
    area = float(logits.shape[-2] * logits.shape[-1])
    probs = torch.softmax(logits, dim=1)
    if method.loss == "proposals":
        proposal, _ = proposal_mask(
            probs[:, 1].detach(), weak == 1, lower, upper, max_iter=PAPER_MAX_ITER, lr=dual_lr(size, size)
        )
        return partial_cross_entropy(logits, proposal.long())
    ce = partial_cross_entropy(logits, weak)
    fg = probs[:, 1:2]
    if method.penalty == "quadratic":
        penalty = size_penalty(fg, lower[:, None], upper[:, None]) / area
    else:
        # The library's extended log-barrier on each constraint, in units of
        # sqrt(area) pixels. A lower bound of 0 is no constraint for a soft
        # size, and its barrier would push S away from 0 (against the
        # suppression of absent slices), so it is left out there.
        t = BARRIER_T0 * BARRIER_GROWTH**epoch
        scale = math.sqrt(area)
        sizes = soft_size(fg)[:, 0]
        above = log_barrier((sizes - upper) / scale, t)
        below = torch.where(lower > 0, log_barrier((lower - sizes) / scale, t), torch.zeros_like(sizes))
        penalty = above + below
    return ce + config.size_weight * penalty.mean()


def train_method(
    method: Method,
    experiment: Experiment,
    config: ReproduceConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
    prefix: str = "",
) -> MethodResult:
    """Train ENet from scratch with ``method`` and score it after every epoch."""
    from .device import make_adam
    from .network import ENet

    torch.manual_seed(config.seed)
    model = ENet(in_channels=1, num_classes=2).to(device)
    optimiser = make_adam(model.parameters(), config.lr, device)
    forward = model
    if config.compile:
        from .compiled import CompiledForward

        forward = CompiledForward(model)  # compiles on the first step (and again for a smaller last batch)
    lower_np, upper_np = experiment.slice_bounds(method)
    lower_all = torch.from_numpy(lower_np.astype(np.float32))
    upper_all = torch.from_numpy(upper_np.astype(np.float32))
    n = experiment.images.shape[0]
    halve_at = config.epochs // 2
    result = MethodResult(method=method.key, fingerprint=config.fingerprint(), device=str(device))
    train_seconds, images_seen = 0.0, 0
    for epoch in range(config.epochs):
        if epoch == halve_at and halve_at > 0:
            for group in optimiser.param_groups:
                group["lr"] = config.lr / 2
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        if config.slices_per_epoch is not None:
            order = order[: config.slices_per_epoch]
        losses = []
        # How often the (soft) predicted size is outside the method's bounds
        # during the epoch: kept on the device, read once per epoch.
        below = torch.zeros((), device=device)
        with_lower = torch.zeros((), device=device)
        above = torch.zeros((), device=device)
        with_upper = torch.zeros((), device=device)
        _sync(device)
        start = time.perf_counter()
        for first in range(0, len(order), config.batch_size):
            idx = torch.from_numpy(order[first : first + config.batch_size])
            x = experiment.images[idx].to(device)
            lower, upper = lower_all[idx].to(device), upper_all[idx].to(device)
            logits = forward(x)
            loss = _method_loss(
                method, logits, experiment.weak[idx].to(device).long(), experiment.full[idx].to(device).long(),
                lower, upper, epoch, config,
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.detach())
            with torch.no_grad():
                sizes = torch.softmax(logits.detach().float(), dim=1)[:, 1].sum(dim=(1, 2))
                below += ((sizes < lower) & (lower > 0)).sum()
                with_lower += (lower > 0).sum()
                above += ((sizes > upper) & (upper > 0)).sum()
                with_upper += (upper > 0).sum()
        losses = [float(v) for v in losses]
        _sync(device)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        images_seen += len(order)
        rows = evaluate(model, experiment.val, device)
        d3, _, d2 = _summary(rows)
        bounded = method.bounds != "none"
        result.epochs.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "dice3d": d3,
                "dice2d": d2,
                "seconds": seconds,
                # shares of training slices whose soft size broke a bound (None: method without bounds)
                "below_lower": float(below / with_lower) if bounded and float(with_lower) > 0 else None,
                "above_upper": float(above / with_upper) if bounded and float(with_upper) > 0 else None,
            }
        )
        log(
            f"{prefix}[{method.key}] epoch {epoch + 1}/{config.epochs}  loss {np.mean(losses):.4f}  "
            f"val Dice 3D {d3:.3f} 2D {d2:.3f}  ({seconds:.1f} s, {1000 * seconds / len(order):.0f} ms/image)"
        )
    result.per_volume = [{k: v for k, v in r.items() if k != "dice2d_slices"} for r in rows]
    result.dice3d_mean, result.dice3d_std, result.dice2d_mean = _summary(rows)
    result.ms_per_image = 1000.0 * train_seconds / max(images_seen, 1)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ outputs
def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _method_file(out: Path, key: str) -> Path:
    return out / "methods" / f"{key}.json"


def load_finished(out: Path, config: ReproduceConfig) -> dict[str, MethodResult]:
    """Finished methods in ``out`` that were run with ``config``'s settings.

    Raises
    ------
    ReproduceError
        ``out`` holds a result of the same method with other settings (a
        table must not mix them).
    """
    finished = {}
    wanted = config.fingerprint()
    folder = out / "methods"
    if not folder.is_dir():
        return finished
    for path in sorted(folder.glob("*.json")):
        try:
            result = MethodResult.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ReproduceError(f"cannot read {path}: {exc}; delete it to rerun that method") from exc
        if result.method not in METHODS:
            continue
        if result.fingerprint != json.loads(json.dumps(wanted)):
            raise ReproduceError(
                f"{path} was produced with other settings; use another --out or delete {folder} to start over"
            )
        finished[result.method] = result
    return finished


def save_result(out: Path, result: MethodResult) -> Path:
    """Write ``methods/<key>.json`` atomically."""
    path = _method_file(out, result.method)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(result.to_json(), indent=1))
    return path


def results_markdown(results: dict[str, MethodResult], config: ReproduceConfig, notes: Sequence[str] = ()) -> str:
    """The table of ``results.md``: one row per finished method, in Table 1 order."""
    lines = [
        "# Reproduction of Table 1 (Kervadec et al., constrained-CNN losses)",
        "",
        f"Data: {config.data or f'{config.phantoms} synthetic phantoms {tuple(config.phantom_shape)}'}; "
        f"label {config.label}; grid {config.size}x{config.size} ({config.resample}); "
        f"{config.epochs} epochs, batch {config.batch_size}, seed {config.seed}.",
        *notes,
        "",
        "| Method | 3D Dice (mean ± std) | 2D Dice | best 3D Dice (epoch)* | train ms/image "
        "| below lower / above upper** | paper's DSC (ACDC) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, method in METHODS.items():
        if key not in results:
            continue
        r = results[key]
        best_epoch, best = r.best_epoch
        paper = f"{method.paper:.4f}" if method.paper is not None else "—"
        last = r.epochs[-1]
        broken = " / ".join(
            "—" if last.get(k) is None else f"{100 * last[k]:.0f}%" for k in ("below_lower", "above_upper")
        )
        lines.append(
            f"| {method.label} | {r.dice3d_mean:.3f} ± {r.dice3d_std:.3f} | {r.dice2d_mean:.3f} | "
            f"{best:.3f} ({best_epoch}) | {r.ms_per_image:.1f} | {broken} | {paper} |"
        )
    lines += [
        "",
        "Dice after the last epoch, over the validation volumes (ED and ES of each validation patient), "
        "on their native grids. *Best epoch: chosen on the validation set itself, hence optimistic. "
        "**Last epoch: share of the target-present training slices whose soft predicted size was below "
        "the lower bound (where it is > 0) or above the upper bound. "
        "The last column quotes the paper's Table 1 (ACDC, 256x256, 200 epochs, GPU) for reference; "
        "it was not produced by this run.",
        "",
    ]
    return "\n".join(lines)


def per_volume_csv(results: dict[str, MethodResult]) -> str:
    """CSV rows ``method, volume, subject, phase, dice3d, dice2d``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "volume", "subject", "phase", "dice3d", "dice2d"])
    for key in METHODS:
        if key in results:
            for row in results[key].per_volume:
                writer.writerow(
                    [key, row["volume"], row["subject"], row["phase"], f"{row['dice3d']:.6f}", f"{row['dice2d']:.6f}"]
                )
    return buffer.getvalue()


def plot_dice_per_epoch(results: dict[str, MethodResult], path: Path) -> Path:
    """Validation 3D Dice per epoch, one line per method (the paper's Fig. 3), as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for key, method in METHODS.items():
        if key in results:
            epochs = [e["epoch"] for e in results[key].epochs]
            dice = [e["dice3d"] for e in results[key].epochs]
            ax.plot(epochs, dice, label=method.label, linestyle="--" if method.loss == "proposals" else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation 3D Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Validation Dice per epoch (as the paper's Fig. 3)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_outputs(out: Path, results: dict[str, MethodResult], config: ReproduceConfig, notes: Sequence[str] = ()) -> None:
    """(Re)write ``results.md``, ``per_volume.csv`` and ``dice_per_epoch.png``."""
    _atomic_write_text(out / "results.md", results_markdown(results, config, notes))
    _atomic_write_text(out / "per_volume.csv", per_volume_csv(results))
    plot_dice_per_epoch(results, out / "dice_per_epoch.png")


# ------------------------------------------------------------------- driver
def run_reproduction(
    config: ReproduceConfig, out: Path | str, log: Callable[[str], None] = print
) -> dict[str, MethodResult]:
    """Run every method of ``config`` not yet finished in ``out``.

    Each method's result is saved as soon as it finishes and the tables and
    plot are rewritten, so an interruption loses only the method in progress.

    Returns
    -------
    dict
        ``{method key: MethodResult}`` for every finished method in ``out``
        (including those of earlier runs with the same settings).
    """
    from .device import select_device

    config.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReproduceError(f"--out {out} exists and is not a folder")
    device = select_device(config.device)
    if config.compile:
        from .compiled import require_compile

        require_compile(device)
    if config.data:
        find_patients(config.data)  # a wrong folder fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    finished = load_finished(out, config)
    todo = [m for m in config.methods if m not in finished]
    for key in config.methods:
        if key in finished:
            log(f"[{key}] already finished in {out}: skipped")
    if not todo:
        write_outputs(out, finished, config)
        return finished

    source = config.data or f"{config.phantoms} phantoms {tuple(config.phantom_shape)}"
    log(f"loading {source} ...")
    experiment = build_experiment(load_cohort(config), config)
    lo, up = experiment.tight_mm2
    notes = [
        f"Training patients: {len(experiment.train_subjects)}, validation patients: "
        f"{len(experiment.val_subjects)} ({', '.join(experiment.val_subjects)}); "
        f"{experiment.images.shape[0]} training slices.",
        f"Tight bounds from {experiment.bound_subject}: {lo:.0f}-{up:.0f} mm^2 "
        f"(about {lo / np.median(experiment.pixel_area):.0f}-{up / np.median(experiment.pixel_area):.0f} px "
        f"on the {config.size}x{config.size} grid).",
    ]
    for line in notes:
        log(line)
    log(f"device: {device}; methods to run: {', '.join(todo)}")
    for i, key in enumerate(todo):
        result = train_method(METHODS[key], experiment, config, device, log, prefix=f"({i + 1}/{len(todo)}) ")
        save_result(out, result)
        finished[key] = result
        write_outputs(out, finished, config, notes)
        log(
            f"[{key}] done: 3D Dice {result.dice3d_mean:.3f} ± {result.dice3d_std:.3f}, "
            f"2D Dice {result.dice2d_mean:.3f}, {result.ms_per_image:.1f} ms/image -> {out / 'results.md'}"
        )
    return finished


# ---------------------------------------------------------------------- CLI
def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``reproduce`` to the ``napari-sizeloss`` sub-commands."""
    p = subparsers.add_parser(
        "reproduce",
        help="compare the paper's methods (Table 1) on an ACDC-layout folder or synthetic phantoms",
        description=(
            "Train every method of the paper's Table 1 from scratch on the same split and score them on "
            "validation patients. Without --data, runs on synthetic phantoms. Finished methods are kept "
            "in RESULTS_DIR and skipped on a rerun with the same settings."
        ),
    )
    p.add_argument("--data", metavar="DIR", help="ACDC-layout folder (patientNNN/Info.cfg, _frameFF[_gt].nii.gz)")
    p.add_argument("--out", metavar="RESULTS_DIR", required=True, help="results folder (created)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs per method (budget default)")
    p.add_argument("--val-patients", type=int, metavar="K", help="validation patients (default: a quarter)")
    p.add_argument(
        "--methods", nargs="+", metavar="METHOD", choices=list(METHODS), default=None,
        help=f"methods to run, in order (default: all): {', '.join(METHODS)}",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--seed", type=int, default=0, help="split, initial weights, data order, phantoms")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile: 1.5-2x faster steps after a compile per method "
                        "(about 100 s on 2 CPU cores, seconds when cached); the same computation, rounded differently")
    p.add_argument(
        "--budget", choices=list(BUDGETS), default=DEFAULT_BUDGET,
        help="preset of epochs, grid size, batch and phantom cohort: quick (minutes on a laptop CPU), "
        "standard (default), paper (256x256, batch 1, 200 epochs)",
    )
    p.add_argument("--label", type=int, default=LV_CAVITY, help="target label value (default 3, LV cavity)")
    p.add_argument("--size", type=int, metavar="PX", help="network grid side (budget default; the paper: 256)")
    p.add_argument("--batch-size", type=int, metavar="B", help="slices per step (budget default; the paper: 1)")
    p.add_argument("--slices-per-epoch", type=int, metavar="N", help="random subset of training slices per epoch")
    p.add_argument("--resample", choices=["resize", "spacing"], default="resize",
                   help="stretch slices to the grid (paper) or keep a fixed pixel size")
    p.add_argument("--target-spacing", type=float, metavar="MM", help="network pixel size for --resample spacing")
    p.add_argument("--phantoms", type=int, metavar="N", help="phantom cohort size without --data (budget default)")
    p.add_argument("--phantom-shape", type=int, nargs=4, metavar=("X", "Y", "Z", "T"),
                   help="phantom volume shape without --data (budget default)")
    p.set_defaults(func=run_reproduce)
    return p


def config_from_args(args: argparse.Namespace) -> ReproduceConfig:
    """A :class:`ReproduceConfig` from parsed ``reproduce`` options and the budget preset."""
    budget = dict(BUDGETS[getattr(args, "budget", None) or DEFAULT_BUDGET])
    for name in ("epochs", "size", "batch_size", "phantoms", "phantom_shape"):
        value = getattr(args, name, None)
        if value is not None:
            budget[name] = tuple(value) if name == "phantom_shape" else value
    return ReproduceConfig(
        data=args.data,
        label=args.label,
        val_patients=args.val_patients,
        methods=tuple(args.methods or METHODS),
        seed=args.seed,
        slices_per_epoch=args.slices_per_epoch,
        resample=args.resample,
        target_spacing=args.target_spacing,
        device=args.device,
        compile=bool(getattr(args, "compile", False)),
        **budget,  # type: ignore[arg-type]
    )


def run_reproduce(args: argparse.Namespace) -> int:
    """Entry point of ``napari-sizeloss reproduce``; returns the exit status.

    User errors raise ``ValueError`` subclasses (the CLI prints them as one
    ``error:`` line, status 2). Ctrl-C stops after saving nothing of the
    method in progress; finished methods stay in ``--out``.
    """
    config = config_from_args(args)
    try:
        results = run_reproduction(config, args.out, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted: finished methods are kept in {args.out}; rerun the same command to resume",
              file=sys.stderr, flush=True)
        return 130
    print(f"{len(results)} method(s) in {Path(args.out) / 'results.md'}", flush=True)
    return 0
