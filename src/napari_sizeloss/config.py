"""Settings of a training run: :class:`TrainConfig` (torch-free).

Kept apart from :mod:`napari_sizeloss.trainer` so that the widget can show
the defaults without importing torch (importing torch on napari's GUI thread
froze the window 2.7-3.5 s when the Advanced panel was first unfolded).
:mod:`napari_sizeloss.trainer` re-exports both names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["DEFAULT_TTA", "PENALTIES", "TTA_MODES", "TrainConfig"]

PENALTIES = ("quadratic", "log-barrier")

#: Test-time augmentations (:mod:`napari_sizeloss.tta`): one view, 4 flips, or 8 flips and quarter turns.
TTA_MODES = ("none", "flips", "dihedral")

#: What interactive sessions and :class:`~napari_sizeloss.trainer.Predictor` average over by default.
DEFAULT_TTA = "flips"


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes
    ----------
    steps, minutes : budget; ``steps`` optimisation steps, or wall-clock
        ``minutes`` when ``steps`` is None.
    lr : Adam learning rate.
    lr_halve_every : halve the learning rate every this many epochs (None: never).
    lr_decay : ``"cosine"`` decays the learning rate over each round's budget
        (steps or minutes) to ``lr_floor`` x ``lr``; ``None`` keeps it.
    lr_floor : the cosine decay's end, as a fraction of ``lr``.
    resume_lr_factor : a round that continues trained weights (Train again,
        Use corrections, ``--init``) starts at ``lr`` x this: refining, not
        relearning (on the demo, corrections gained more at 0.5 than at 1).
    ema_decay : opt-in: predictions (live previews, Predict, validation,
        saved checkpoints) use an exponential moving average of the weights
        over the steps, with this decay per step (0.95: about the last 20
        steps; less over the first steps, so that early previews do not lag).
        ``None`` (the default, and the paper's protocol) predicts with the
        last step's weights. Training itself is the same either way. On 16
        demo cases the average changed the 3D Dice by +0.001 on average
        (``scripts/average_bench.py``), so it is not the default.
    size_weight : weight of the size term (the paper's 1e-2).
    penalty : ``"quadratic"`` (paper eq. 3) or ``"log-barrier"``.
    barrier_t, barrier_growth : log-barrier ``t`` and its growth per epoch.
    batch_size : slices per step.
    crop : smallest side (px) of the region of interest the network trains and
        predicts on; ``None`` trains on whole slices (the paper's set-up).
    augment : flips, 90-degree rotations, intensity jitter.
    labelled_fraction : share of each batch drawn from slices with dots or
        corrections; the rest is drawn from all slices.
    one_bound : slices with dots get ``[0, upper]`` (the paper's one-bound runs).
    device : ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    amp : the fast path: mixed precision on CUDA; channels-last on CUDA and, unless
        ``compile``, on the CPU. False: plain float32, contiguous (the reference path).
    compile : train through ``torch.compile`` (:mod:`napari_sizeloss.compiled`):
        1.5-1.9x the steps per second once compiled, but the first step
        compiles (80-110 s on 2 CPU cores, 3-11 s when cached; again for a
        new crop size), so only long runs gain. Predictions stay eager.
    compile_ahead : with ``compile`` on the CPU, compile each new batch shape
        first in a child process (:func:`~napari_sizeloss.compiled.compile_ahead`),
        then load it here from inductor's cache: the training process stays
        responsive (the widget's setting) and :meth:`TrainingSession.stop`
        ends the wait at once. A cold compile then takes about 10 s longer in
        all; a shape compiled ahead before (a marker in inductor's cache
        folder) skips the child.
    threads : torch CPU threads (None: leave torch's setting).
    seed : seeds the sampler, the augmentation and the network's initialisation.
    preview_every : steps between live previews of the requested slice.
    preview_interval_s : and at least this many seconds between them (0: no
        floor). A preview costs the training thread a forward pass of one
        slice and the viewer a redraw; on a fast device every 10 steps would
        be many a second (a GPU's 2 ms steps: 50), more than anyone can watch.
    validate_every : steps between validation Dice figures when ground truth is given.
    keep_connected : masks (:meth:`TrainingSession.predict`, the widget's
        prediction layer, ``train --pred``) keep only the predicted regions
        connected to a target dot or a corrected target pixel
        (:func:`~napari_sizeloss.connectivity.keep_connected`); probabilities
        stay the network's own. False (and the paper's protocol) keeps every
        region the network predicts.
    tta : test-time augmentation of every prediction the session makes (live
        previews, Predict, validation): one of :data:`TTA_MODES`
        (:mod:`napari_sizeloss.tta`). ``"flips"`` (the default) averages
        each slice over its 4 flips, ``"dihedral"`` over its 8 flips and
        quarter turns, ``"none"`` (the paper's protocol) predicts once: 4, 8
        or 1 forward passes per slice. Training is the same either way.
    """

    steps: int | None = 300
    minutes: float | None = None
    lr: float = 5e-3
    lr_halve_every: int | None = None
    lr_decay: str | None = "cosine"
    lr_floor: float = 0.05
    resume_lr_factor: float = 0.5
    ema_decay: float | None = None
    size_weight: float = 1e-2
    penalty: str = "quadratic"
    barrier_t: float = 5.0
    barrier_growth: float = 1.1
    batch_size: int = 8
    crop: int | None = 96
    augment: bool = True
    labelled_fraction: float = 0.5
    one_bound: bool = False
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    compile_ahead: bool = False
    threads: int | None = None
    seed: int = 0
    preview_every: int = 10
    preview_interval_s: float = 1.0
    validate_every: int | None = None
    keep_connected: bool = True
    tta: str = DEFAULT_TTA

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}; choose one of {', '.join(PENALTIES)}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give a budget: steps or minutes")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if not (self.size_weight >= 0 and math.isfinite(self.size_weight)):
            raise ValueError(f"size weight must be >= 0, got {self.size_weight}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.resume_lr_factor <= 1:
            raise ValueError(f"resume_lr_factor must be in (0, 1], got {self.resume_lr_factor}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.lr_decay not in (None, "cosine"):
            raise ValueError(f"unknown learning-rate decay {self.lr_decay!r}; choose cosine or None")
        if not (self.preview_interval_s >= 0 and math.isfinite(self.preview_interval_s)):
            raise ValueError(
                f"preview_interval_s must be a finite number of seconds >= 0, got {self.preview_interval_s}"
            )
        if self.crop is not None and self.crop < 16:
            raise ValueError(f"crop must be at least 16 px, got {self.crop}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {self.tta!r}")

    @classmethod
    def interactive(cls, **overrides) -> "TrainConfig":
        """Defaults for one volume in an interactive session (fast on a CPU).

        Batches of 8 crops around the dots' region (96 px at least): per image
        about 5x cheaper than whole 256x256 slices at batch 1, with the same
        loss and bounds.
        """
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides) -> "TrainConfig":
        """The paper's protocol: Adam, lr 5e-3 halved after 100 epochs,
        size weight 1e-2, batch 1, whole slices, predictions from the last
        step's weights, every region the network predicts kept, one forward
        pass per slice (no test-time augmentation)."""
        base = dict(lr=5e-3, lr_halve_every=100, lr_decay=None, resume_lr_factor=1.0, ema_decay=None, size_weight=1e-2,
                    batch_size=1, crop=None, keep_connected=False, tta="none")
        base.update(overrides)
        return cls(**base)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
