"""Fine-tuning ENet on one cine volume from dots and size bounds.

The training loop is a generator (:meth:`TrainingSession.run`) that yields one
typed :class:`ProgressEvent` per optimisation step and can be stopped between
steps from any thread. The CLI and the tests drain it with :func:`train`; the
napari widget runs it in a ``thread_worker``.

Loss per step, for a batch of ``B`` crops of slices (``(B, 1, h, w)``)::

    loss = CE + size_weight * mean_b C_b / A                  (quadratic, paper eq. 3)
    loss = CE + size_weight * mean_b [psi_t((S_b - upper)/sqrt(A)) + psi_t((lower - S_b)/sqrt(A))]  (log-barrier)

- ``CE`` is :func:`~napari_sizeloss.losses.partial_cross_entropy` over the
  labelled pixels (target dots -> class 1, background dots -> class 0, every
  pixel of a corrected slice), each labelled slice weighing the same.
- ``C_b`` is :func:`~napari_sizeloss.losses.size_penalty` of the target
  class's soft size ``S_b`` (pixels) against the slice's bounds. ``A`` is the
  area of a *full* slice in pixels (``X * Y``), as the authors' code divides by
  the image area; it does not change with the crop, so bounds and weight mean
  the same thing whatever crop the trainer uses. The paper's weight is 1e-2.
- The log-barrier's lower term applies only where ``lower > 0``: a zero lower
  bound is no constraint, and its barrier would fight the suppression of
  slices tagged absent.
- Per-slice bounds: slices with target dots get ``[lower, upper]``; slices
  tagged target-absent ``[0, 0]``; every other slice ``[0, upper]``; a
  corrected slice its exact corrected area.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from .allocator import tune_allocator
from .averaging import WeightAverage
from .bounds import SizeBounds, slice_bounds
from .checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from .config import DEFAULT_TTA, PENALTIES, TrainConfig  # noqa: F401  (PENALTIES: re-exported)
from .connectivity import anchors_from, split_by_anchors
from .connectivity import keep_connected as keep_connected_to
from .data import (
    Box,
    as_4d,
    augment_pair,
    crop_volume,
    from_4d,
    normalisation_params,
    normalise,
    region_of_interest,
)
from .device import (
    autocast,
    is_channels_last,
    make_adam,
    match_state_layouts,
    select_device,
    to_channels_last,
    uses_channels_last,
)
from .inference import FOLD_MIN_PIXELS, inference_model
from .losses import check_target_range, log_barrier, partial_cross_entropy, size_penalty
from .metrics import dice_3d
from .network import ENet
from .tta import check_tta, tta_probabilities, views_per_pass
from .weak_labels import SEED_BACKGROUND, SEED_TARGET, SeedsError, validate_seeds

#: Pixels a training crop may shift around the region of interest.
JITTER = 8


class EventKind(str, Enum):
    """What a :class:`ProgressEvent` reports."""

    STEP = "step"
    VALIDATION = "validation"
    DONE = "done"


@dataclass(frozen=True)
class Preview:
    """The current prediction of one slice: ``mask`` is uint8 0/1 (X, Y)."""

    z: int
    t: int
    mask: np.ndarray


@dataclass(frozen=True)
class ProgressEvent:
    """One report from the training loop.

    Sizes are in pixels of the source grid; losses are the weighted terms
    whose sum was minimised (``loss = ce + size``).
    """

    kind: EventKind
    step: int
    total_steps: int | None
    epoch: int
    elapsed_s: float
    eta_s: float | None
    lr: float
    loss: float
    ce: float
    size: float
    images_per_s: float
    sizes: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    dice: float | None = None
    preview: Preview | None = None
    stopped: bool = False

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1] when the budget is known."""
        if self.total_steps:
            return min(1.0, self.step / self.total_steps)
        if self.eta_s is not None and self.elapsed_s + self.eta_s > 0:
            return self.elapsed_s / (self.elapsed_s + self.eta_s)
        return None


def _as_bool_zt(array, shape_zt: tuple[int, int], name: str) -> np.ndarray:
    if array is None:
        return np.zeros(shape_zt, dtype=bool)
    arr = np.asarray(array, dtype=bool)
    if arr.ndim == 1 and shape_zt[1] == 1:
        arr = arr[:, None]
    if arr.shape != shape_zt:
        raise SeedsError(f"{name} has shape {arr.shape}, expected (Z, T) = {shape_zt}")
    return arr


class TrainingSession:
    """A model, its optimiser and one volume's weak supervision.

    Parameters
    ----------
    image : ndarray float (X, Y), (X, Y, Z) or (X, Y, Z, T)
        Raw intensities; normalised per volume (robust min-max).
    seeds : ndarray uint8, ``image``'s shape
        0 unlabelled, 1 target dot, 2 background dot.
    bounds : SizeBounds
        Per-slice area bounds, ``"px"`` or ``"mm2"`` (needs ``spacing``).
    spacing : (sx, sy[, sz]) mm, optional
    absent : bool (Z, T), optional
        Slices tagged target-absent.
    corrections : uint8 0/1, ``image``'s shape, optional
        Full masks of slices the user corrected (``corrected`` says which).
    corrected : bool (Z, T), optional
    config : TrainConfig, optional
    checkpoint : Checkpoint or path, optional
        Start from these weights (and optimiser state, when compatible).
    ground_truth : 0/1 array, ``image``'s shape, optional
        Enables validation Dice in the events.
    """

    def __init__(
        self,
        image: np.ndarray,
        seeds: np.ndarray,
        bounds: SizeBounds,
        *,
        spacing=None,
        absent=None,
        corrections=None,
        corrected=None,
        config: TrainConfig | None = None,
        checkpoint: Checkpoint | str | Path | None = None,
        ground_truth=None,
    ) -> None:
        self.config = config if config is not None else TrainConfig.interactive()
        image = np.asarray(image)
        if image.ndim not in (2, 3, 4):
            raise ValueError(f"expected a 2D, 3D or 4D image (X, Y[, Z[, T]]), got shape {image.shape}")
        if not np.all(np.isfinite(image)):
            raise ValueError("the image contains NaN or infinite values")
        self._ndim = image.ndim
        self.shape = image.shape
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else None
        self.normalisation = normalisation_params(image)
        self._image = normalise(as_4d(image), self.normalisation)
        self._ground_truth = None if ground_truth is None else as_4d(np.asarray(ground_truth) > 0)
        if self._ground_truth is not None and self._ground_truth.shape != self._image.shape:
            raise SeedsError(
                f"ground truth shape {np.shape(ground_truth)} does not match image shape {self.shape}"
            )
        self.device = select_device(self.config.device)
        # freed activations stay in the heap: with glibc's defaults each CPU step faulted in
        # thousands of fresh pages (training steps about 8 % slower; scripts/alloc_bench.py --train)
        tune_allocator()
        self._stop = threading.Event()
        self._preview_lock = threading.Lock()
        self._preview_request: tuple[int, int] | None = None
        self._last_kept: np.ndarray | None = None  # bool (X, Y, Z, T): the last filtered whole-volume mask
        self._rng = np.random.default_rng(self.config.seed)
        self.total_steps_done = 0
        self.epoch = 0
        self.history: list[ProgressEvent] = []

        torch.manual_seed(self.config.seed)
        self._resumed = False
        ckpt = checkpoint
        self._from_checkpoint = ckpt is not None
        if ckpt is not None and not isinstance(ckpt, Checkpoint):
            ckpt = load_checkpoint(ckpt)
        if ckpt is not None:
            self.model = build_model(ckpt)
            if self.model.config.get("num_classes") != 2 or self.model.config.get("in_channels") != 1:
                raise ValueError(
                    "checkpoint is for a model with "
                    f"{self.model.config.get('in_channels')} input channel(s) and "
                    f"{self.model.config.get('num_classes')} classes; this tool needs 1 and 2"
                )
        else:
            self.model = ENet(in_channels=1, num_classes=2)
        # channels-last where it pays, but not for compiled training on the CPU (measured in NCHW,
        # and compile_ahead's child compiles NCHW graphs)
        self._channels_last = (
            self.config.amp and uses_channels_last(self.device)
            and not (self.config.compile and self.device.type == "cpu")
        )
        self.model.to(self.device)
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_adam(self.model.parameters(), self.config.lr, self.device)
        self._compiled = None  # the model through torch.compile, built on the first compiled round
        self._average: WeightAverage | None = None  # made at the first step (config.ema_decay)
        if self.config.compile:
            from .compiled import require_compile

            require_compile(self.device)  # refuse before any work, not at the first step
        if ckpt is not None and ckpt.optimizer_state:
            try:
                self.optimizer.load_state_dict(ckpt.optimizer_state)
                match_state_layouts(self.optimizer)  # stored contiguous; the parameters may be channels-last
                for group in self.optimizer.param_groups:
                    group["lr"] = self.config.lr
            except (ValueError, KeyError):
                pass  # another optimiser layout: start Adam afresh, keep the weights
        self._scaler = None
        if self.device.type == "cuda" and self.config.amp and not torch.cuda.is_bf16_supported():
            self._scaler = torch.amp.GradScaler("cuda")

        self.update(seeds=seeds, bounds=bounds, absent=absent, corrections=corrections, corrected=corrected)

    # ------------------------------------------------------------------ set-up
    def update(self, *, seeds=None, bounds=None, absent=None, corrections=None, corrected=None) -> None:
        """Replace the supervision before the next :meth:`run` (weights are kept).

        Arguments left as None keep their current value (pass an all-zero
        array to clear one).
        """
        if seeds is not None:
            seeds = np.asarray(seeds)
            validate_seeds(seeds, self.shape)
            self._seeds = as_4d(seeds.astype(np.uint8))
        Z, T = self._image.shape[2:]
        if absent is not None or not hasattr(self, "_absent"):
            self._absent = _as_bool_zt(absent, (Z, T), "absent tags")
        if corrected is not None or not hasattr(self, "_corrected"):
            self._corrected = _as_bool_zt(corrected, (Z, T), "corrected slices")
        if corrections is not None:
            corrections = np.asarray(corrections)
            if corrections.shape != self.shape:
                raise SeedsError(
                    f"corrections shape {corrections.shape} does not match image shape {self.shape}"
                )
            self._corrections = as_4d(corrections > 0)
        elif not hasattr(self, "_corrections"):
            self._corrections = np.zeros(self._image.shape, dtype=bool)
        if bounds is not None:
            if not isinstance(bounds, SizeBounds):
                raise TypeError("bounds must be a SizeBounds")
            bounds_px = bounds.to_pixels(self.spacing[:2] if self.spacing else None) if bounds.unit != "px" else bounds
            bounds_px.check_fits(self._image.shape[:2])
            self.bounds = bounds
            self.bounds_px = bounds_px
        self._prepare()

    def _prepare(self) -> None:
        X, Y, Z, T = self._image.shape
        seeds = self._seeds
        present = (seeds == SEED_TARGET).any(axis=(0, 1))
        conflict = present & self._absent
        if conflict.any():
            z, t = (int(v) for v in np.argwhere(conflict)[0])
            raise SeedsError(f"slice z={z}, t={t} has target dots but is tagged target-absent")
        lower, upper = slice_bounds(
            self.bounds_px, present & ~self._corrected, self._absent & ~self._corrected,
            one_bound=self.config.one_bound,
        )
        lower, upper = lower.astype(np.float32), upper.astype(np.float32)
        if self._corrected.any():
            areas = self._corrections.sum(axis=(0, 1)).astype(np.float32)
            lower[self._corrected] = areas[self._corrected]
            upper[self._corrected] = areas[self._corrected]
        self._lower, self._upper = lower, upper

        if self.config.crop is None:
            self.roi = Box(0, -(-X // 8) * 8, 0, -(-Y // 8) * 8)
        else:
            self.roi = region_of_interest(
                np.where(self._corrections & self._corrected[None, None], SEED_TARGET, seeds).astype(np.uint8),
                float(self.bounds_px.upper),
                min_side=self.config.crop,
            )
        jitter = JITTER if self.config.crop is not None else 0
        self._jitter = jitter
        train_box = Box(self.roi.x0 - jitter, self.roi.x1 + jitter, self.roi.y0 - jitter, self.roi.y1 + jitter)
        self._train_image = crop_volume(self._image, train_box, fill=float(self._image.min()))
        targets = np.full(self._image.shape, -1, dtype=np.int8)
        targets[seeds == SEED_TARGET] = 1
        targets[seeds == SEED_BACKGROUND] = 0
        if self._corrected.any():
            full = self._corrections.astype(np.int8)
            targets[:, :, self._corrected] = full[:, :, self._corrected]
        self._train_targets = crop_volume(targets, train_box, fill=-1)
        labelled = (self._train_targets >= 0).any(axis=(0, 1))
        self._labelled_slices = np.argwhere(labelled)
        self._all_slices = np.argwhere(np.ones((Z, T), dtype=bool))
        self.area = float(X * Y)
        n_pool = len(self._all_slices)
        self.steps_per_epoch = max(1, int(math.ceil(n_pool / self.config.batch_size)))

    # ------------------------------------------------------------- controls
    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step (thread-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_preview(self, z: int, t: int = 0) -> None:
        """Ask for live previews of slice ``z`` of frame ``t`` (thread-safe)."""
        with self._preview_lock:
            self._preview_request = (int(z), int(t))

    # ------------------------------------------------------------ training
    def _sample_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        B = cfg.batch_size
        n_lab = 0
        if len(self._labelled_slices):
            # B * fraction labelled slices on average; the fractional part is
            # drawn, so batch 1 still sees a labelled slice every other step
            expected = B * cfg.labelled_fraction
            n_lab = int(expected) + int(self._rng.random() < expected - int(expected))
        picks = []
        if n_lab:
            picks.append(self._labelled_slices[self._rng.integers(len(self._labelled_slices), size=n_lab)])
        if B - n_lab:
            picks.append(self._all_slices[self._rng.integers(len(self._all_slices), size=B - n_lab)])
        zt = np.concatenate(picks, axis=0)
        h, w = self.roi.shape
        images = np.empty((B, 1, h, w), dtype=np.float32)
        targets = np.empty((B, h, w), dtype=np.int64)
        for i, (z, t) in enumerate(zt):
            dx, dy = (self._rng.integers(0, 2 * self._jitter + 1, size=2) if self._jitter else (0, 0))
            img = self._train_image[dx : dx + h, dy : dy + w, z, t]
            tgt = self._train_targets[dx : dx + h, dy : dy + w, z, t].astype(np.int64)
            if cfg.augment:
                img, tgt = augment_pair(img, tgt, self._rng)
            images[i, 0] = img
            targets[i] = tgt
        # checked here, on the host, so the loss need not read the range back from a GPU
        check_target_range(targets, 2)
        lower = torch.from_numpy(self._lower[zt[:, 0], zt[:, 1]])
        upper = torch.from_numpy(self._upper[zt[:, 0], zt[:, 1]])
        return torch.from_numpy(images), torch.from_numpy(targets), lower, upper

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
        logits = logits.float()
        labelled = targets >= 0
        per_slice = labelled.sum(dim=(1, 2), keepdim=True).clamp(min=1)
        weight = labelled.float() / per_slice
        ce = partial_cross_entropy(logits, targets, weight=weight, check_targets=False)
        probs = torch.softmax(logits, dim=1)[:, 1:2]
        sizes = probs.sum(dim=(2, 3))
        if self.config.penalty == "quadratic":
            pen = size_penalty(probs, lower[:, None], upper[:, None]) / self.area
        else:
            t = self.config.barrier_t * self.config.barrier_growth ** self.epoch
            scale = math.sqrt(self.area)
            above = log_barrier((sizes - upper[:, None]) / scale, t)
            # a zero lower bound is no constraint: its barrier would push every
            # size up, against the suppression of absent and empty slices
            below = torch.where(
                lower[:, None] > 0, log_barrier((lower[:, None] - sizes) / scale, t), torch.zeros_like(sizes)
            )
            pen = above + below
        size = self.config.size_weight * pen.mean()
        return ce + size, ce, size, sizes[:, 0]

    def _current_lr(self, progress: float = 0.0) -> float:
        """The learning rate at ``progress`` (0-1) through the current round's budget."""
        cfg = self.config
        lr = cfg.lr * (cfg.resume_lr_factor if self._resumed else 1.0)
        if cfg.lr_halve_every:
            lr *= 0.5 ** (self.epoch // cfg.lr_halve_every)
        if cfg.lr_decay == "cosine":
            p = min(max(progress, 0.0), 1.0)
            lr *= cfg.lr_floor + (1.0 - cfg.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * p))
        return lr

    def run(self) -> Iterator[ProgressEvent]:
        """Train within the configured budget, yielding an event per step.

        Ends with a :attr:`EventKind.DONE` event (``stopped=True`` when
        :meth:`stop` ended it early). Calling ``run`` again continues from the
        current weights with a fresh budget.
        """
        cfg = self.config
        self._stop.clear()
        self._resumed = self.total_steps_done > 0 or self._from_checkpoint
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        model, opt = self.model, self.optimizer
        model.train()
        forward = self._training_forward()
        # every batch of a round has this shape; a compiled forward new to it compiles (or loads) at step 1
        batch_shape = (cfg.batch_size, 1, *self.roi.shape)
        loads = cfg.compile_ahead and forward is not model and batch_shape not in forward.shapes
        if loads:
            self._compile_ahead(forward, batch_shape)
        start = time.perf_counter()
        step = 0
        last = None
        images_seen = 0
        last_preview_s = -math.inf  # elapsed seconds of this round's last preview: its first eligible step shows one
        budget_s = cfg.minutes * 60.0 if cfg.steps is None else None
        while not self._stop.is_set():
            if cfg.steps is not None and step >= cfg.steps:
                break
            if budget_s is not None and time.perf_counter() - start >= budget_s:
                break
            self.epoch = self.total_steps_done // self.steps_per_epoch
            if cfg.steps is not None:
                progress = step / cfg.steps
            else:
                progress = (time.perf_counter() - start) / budget_s
            lr = self._current_lr(progress)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y, lower, upper = self._sample_batch()
            x = x.to(self.device, non_blocking=True)
            if self._channels_last:
                x = to_channels_last(x)
            y = y.to(self.device, non_blocking=True)
            lo, hi = lower.to(self.device), upper.to(self.device)
            opt.zero_grad(set_to_none=True)
            with self._loading_compiled(loads and step == 0):
                with autocast(self.device, enabled=cfg.amp):
                    logits = forward(x)
                loss, ce, size, sizes = self._loss(logits, y, lo, hi)
                if self._scaler is not None:
                    self._scaler.scale(loss).backward()
                    self._scaler.step(opt)
                    self._scaler.update()
                else:
                    loss.backward()
                    opt.step()
            self._update_average()
            # one device-to-host copy per step (each read back would wait for the GPU)
            readout = torch.cat([torch.stack([loss.detach(), ce.detach(), size.detach()]).float(),
                                 sizes.detach().float()]).cpu().numpy()
            step += 1
            self.total_steps_done += 1
            images_seen += x.shape[0]
            elapsed = time.perf_counter() - start
            eta = None
            if cfg.steps is not None:
                eta = elapsed / step * (cfg.steps - step)
            elif budget_s is not None:
                eta = max(0.0, budget_s - elapsed)
            preview = None
            if (cfg.preview_every and step % cfg.preview_every == 0
                    and elapsed - last_preview_s >= cfg.preview_interval_s):
                preview = self._preview()
                last_preview_s = elapsed
            dice = None
            kind = EventKind.STEP
            if cfg.validate_every and self._ground_truth is not None and step % cfg.validate_every == 0:
                dice = self.validation_dice()
                kind = EventKind.VALIDATION
            last = ProgressEvent(
                kind=kind,
                step=step,
                total_steps=cfg.steps,
                epoch=self.epoch,
                elapsed_s=elapsed,
                eta_s=eta,
                lr=lr,
                loss=float(readout[0]),
                ce=float(readout[1]),
                size=float(readout[2]),
                images_per_s=images_seen / elapsed if elapsed > 0 else 0.0,
                sizes=readout[3:],
                lower=lower.numpy(),
                upper=upper.numpy(),
                dice=dice,
                preview=preview,
            )
            self.history.append(last)
            yield last
        stopped = self._stop.is_set()
        elapsed = time.perf_counter() - start
        dice = self.validation_dice() if self._ground_truth is not None else None
        done = ProgressEvent(
            kind=EventKind.DONE,
            step=step,
            total_steps=cfg.steps,
            epoch=self.epoch,
            elapsed_s=elapsed,
            eta_s=0.0,
            lr=last.lr if last else self._current_lr(),
            loss=last.loss if last else float("nan"),
            ce=last.ce if last else float("nan"),
            size=last.size if last else float("nan"),
            images_per_s=images_seen / elapsed if elapsed > 0 else 0.0,
            dice=dice,
            stopped=stopped,
        )
        self.history.append(done)
        yield done

    def _training_forward(self):
        """What a training step calls: the model, or (``config.compile``) the same model through torch.compile.

        The compiled wrapper is kept across rounds (a round with the same
        crop size compiles nothing more); the config may switch it on or off
        between rounds (the widget's settings).
        """
        if not self.config.compile:
            return self.model
        if self._compiled is None:
            from .compiled import CompiledForward, require_compile

            require_compile(self.device)
            self._compiled = CompiledForward(self.model)
        return self._compiled

    @staticmethod
    def _loading_compiled(loads: bool):
        """Around the step that loads a compiled network (``compile_ahead``):
        :func:`~napari_sizeloss.compiled.collect_new_objects_only`, so the
        garbage collections it triggers skip the rest of the (GUI's) heap."""
        if not loads:
            return contextlib.nullcontext()
        from .compiled import collect_new_objects_only

        return collect_new_objects_only()

    def _compile_ahead(self, forward, shape: tuple[int, ...]) -> None:
        """Compile ``forward``'s model for ``shape`` in a child process.

        Only on the CPU, and not once compiling has failed here. A failure
        is a warning: the first step then compiles here, as without
        ``compile_ahead``. :meth:`stop` kills the child (the round then ends
        without a step).
        """
        from .compiled import CompileAheadError, compile_ahead

        if self.device.type != "cpu" or not forward.compiled:
            return
        try:
            compile_ahead(self.model, shape, backend=forward.backend, cancel=self._stop.is_set)
        except CompileAheadError as exc:
            warnings.warn(f"{exc}; compiling in this process instead", RuntimeWarning, stacklevel=2)

    # ---------------------------------------------------------- prediction
    @property
    def prediction_model(self) -> torch.nn.Module:
        """The network predictions use: the weights' moving average (``config.ema_decay``)
        once a step has run, else the trained network itself."""
        if self._average is not None and self.config.ema_decay is not None:
            return self._average.model
        return self.model

    def _update_average(self) -> None:
        """After an optimiser step: fold the new weights into the moving average.

        The decay is read each step (the widget may change the settings
        between rounds); ``None`` drops the average.
        """
        decay = self.config.ema_decay
        if decay is None:
            self._average = None
        elif self._average is None:
            self._average = WeightAverage(self.model, decay)
        else:
            self._average.decay = decay
            self._average.update()

    def _preview(self) -> Preview | None:
        with self._preview_lock:
            request = self._preview_request
        if request is None:
            return None
        z, t = request
        Z, T = self._image.shape[2:]
        if not (0 <= z < Z and 0 <= t < T):
            return None
        probs = self._predict_probs(self._image[:, :, z : z + 1, t : t + 1])
        mask = probs[:, :, 0, 0] > 0.5
        if self.config.keep_connected:
            mask = keep_connected_to(mask, self._preview_anchors(z, t))
        return Preview(z=z, t=t, mask=mask.astype(np.uint8))

    def _preview_anchors(self, z: int, t: int) -> np.ndarray:
        """What anchors a one-slice preview's regions, bool (X, Y).

        A slice alone cannot follow the target through neighbouring slices
        and frames as :meth:`predict` does. Its anchors are the dots and
        corrected target pixels on it, and the pixels the last whole-volume
        mask (already filtered) kept on it: a region that overlaps either is
        shown; one that overlaps neither (the aorta) is not. A slice with no
        anchor at all is shown whole, like a volume with none.
        """
        zt = (slice(None), slice(None), slice(z, z + 1), slice(t, t + 1))
        anchors = anchors_from(self._seeds[zt], self._corrections[zt], self._corrected[z : z + 1, t : t + 1])
        anchors = anchors[:, :, 0, 0]
        if self._last_kept is not None:
            anchors = anchors | self._last_kept[:, :, z, t]
        return anchors

    def _predict_probs(self, image4: np.ndarray, tta: str | None = None) -> np.ndarray:
        box = self.roi if self.config.crop is not None else None
        model = self.prediction_model
        was_training = model.training
        try:
            return predict_volume(
                model, image4, normalisation=None, device=self.device, box=box,
                channels_last=self._channels_last, amp=self.config.amp,
                tta=self.config.tta if tta is None else tta,
            )
        finally:
            model.train(was_training)

    def probabilities(self) -> np.ndarray:
        """Target probability, float32 in the image's shape."""
        return from_4d(self._predict_probs(self._image), self._ndim)

    def predict(self, keep_connected: bool | None = None, tta: str | None = None) -> np.ndarray:
        """Binary mask (uint8 0/1) in the image's shape.

        ``keep_connected`` (None: ``config.keep_connected``, on by default)
        keeps only the regions connected to a target dot or a corrected
        target pixel (:meth:`anchors`; see
        :func:`~napari_sizeloss.connectivity.keep_connected`). About 40 ms
        for a 192x168x10x20 cine. ``tta`` (None: ``config.tta``): the
        test-time augmentation (:mod:`napari_sizeloss.tta`).
        """
        return self.predict_split(keep_connected, tta)[0]

    def predict_split(
        self, keep_connected: bool | None = None, tta: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`predict`'s mask, what its filter left out, and how many regions that was.

        Returns
        -------
        mask : ndarray uint8 0/1, the image's shape
            As :meth:`predict`.
        left_out : ndarray bool, the image's shape
            Predicted pixels of the regions no anchor touches (all False
            when the filter is off or no anchor lies on the prediction).
        n_left_out : int
            Number of those regions (connected in 4D, as the filter links them).
        """
        predicted = self._predict_probs(self._image, tta) > 0.5
        left_out, n_left_out = np.zeros(predicted.shape, dtype=bool), 0
        if self.config.keep_connected if keep_connected is None else keep_connected:
            predicted, left_out, n_left_out = split_by_anchors(predicted, self.anchors())
            self._last_kept = predicted  # anchors the next previews (_preview_anchors)
        return from_4d(predicted.astype(np.uint8), self._ndim), from_4d(left_out, self._ndim), n_left_out

    def anchors(self) -> np.ndarray:
        """Where the user said "target", bool (X, Y, Z, T): target dots and corrected target pixels."""
        return anchors_from(self._seeds, self._corrections, self._corrected)

    def predicted_sizes(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Predicted target area per slice, (Z, T) float, pixels."""
        mask = self.predict() if mask is None else mask
        return as_4d(np.asarray(mask) > 0).sum(axis=(0, 1)).astype(np.float64)

    def slice_bounds_px(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-slice (lower, upper) bounds in force, each (Z, T) px."""
        return self._lower.copy(), self._upper.copy()

    def validation_dice(self) -> float | None:
        """Mean 3D Dice over frames against the ground truth given at start."""
        if self._ground_truth is None:
            return None
        return float(np.mean(dice_3d(as_4d(self.predict()) > 0, self._ground_truth)))

    # ------------------------------------------------------------ storage
    def save(self, path) -> Path:
        """Write a safe checkpoint: weights, optimiser, config, normalisation, bounds.

        The weights are those predictions use (:attr:`prediction_model`), so
        that ``napari-sizeloss predict`` and Load model give the masks seen
        here; a session resumed from it trains on from them.
        """
        return save_checkpoint(
            path,
            self.prediction_model,
            optimizer=self.optimizer,
            normalisation=self.normalisation,
            bounds=self.bounds.as_dict(),
            metadata={
                "roi": self.roi.as_list(),
                "image_shape": [int(s) for s in self.shape],
                "spacing": list(self.spacing) if self.spacing else None,
                "steps": int(self.total_steps_done),
                "config": {k: v for k, v in self.config.as_dict().items()},
            },
        )


def train(
    image: np.ndarray,
    seeds: np.ndarray,
    bounds: SizeBounds,
    *,
    callback: Callable[[ProgressEvent], None] | None = None,
    **session_kwargs,
) -> TrainingSession:
    """Train synchronously (scripts, CLI, tests); returns the session.

    ``session_kwargs`` are those of :class:`TrainingSession`; ``callback`` is
    called with every event.
    """
    session = TrainingSession(image, seeds, bounds, **session_kwargs)
    for event in session.run():
        if callback is not None:
            callback(event)
    return session


#: Pixels per forward pass when predicting (8 slices of 256x256): on 2 CPU
#: cores whole slices cost within a few percent per slice from 4 to 25 per
#: batch once the allocator is tuned, while small regions of interest need
#: many slices per batch to amortise each layer's overhead (``napari-sizeloss
#: bench``, a 96x96 region of a 256x256x10x25 cine: 1.05 s at 8 per batch,
#: 0.87 s at 56). ``python scripts/alloc_bench.py`` compares whole-slice settings.
PREDICT_PIXELS = 8 * 256 * 256


@torch.inference_mode()
def predict_volume(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    normalisation: dict | None,
    device: torch.device | str = "cpu",
    box: Box | None = None,
    batch_size: int | None = None,
    channels_last: bool | None = None,
    amp: bool = True,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    fill: float | None = None,
    tta: str = "none",
) -> np.ndarray:
    """Target probability for every slice of a volume.

    Parameters
    ----------
    model : ENet (2 classes)
    image : ndarray (X, Y), (X, Y, Z) or (X, Y, Z, T)
        Raw intensities when ``normalisation`` is given (a dict from
        :func:`~napari_sizeloss.data.normalisation_params`, or ``"auto"`` to
        compute it from this image); already normalised when None.
    box : Box, optional
        Predict inside this in-plane box only (zero outside).
    batch_size : slices per forward pass; by default as many as make
        :data:`PREDICT_PIXELS` pixels (at least 1).
    channels_last : lay the batch-norm-folded copy and the batches out
        channels-last; None: where it pays on ``device``
        (:func:`~napari_sizeloss.device.uses_channels_last`), or, with
        ``forward``, not. A prediction too small to fold runs ``model``
        itself, with batches in ``model``'s own layout.
    forward : callable, optional
        Runs the batches instead of ``model`` (e.g. a
        :class:`~napari_sizeloss.compiled.CompiledForward` of a folded copy);
        the last batch is then padded to ``batch_size`` slices so that a
        compiled forward sees one shape only.
    fill : float, optional
        The (normalised) intensity of ``box`` pixels outside the image; by
        default the normalised image's minimum.
    tta : one of :data:`~napari_sizeloss.tta.TTA_MODES`
        Average the probabilities over flipped (``"flips"``, 4 views) or
        also rotated (``"dihedral"``, 8) copies of each slice
        (:func:`~napari_sizeloss.tta.tta_probabilities`): 4 or 8 times the
        forward passes. The default batch then holds as many slices fewer,
        so a pass stays within :data:`PREDICT_PIXELS` pixels.

    Returns
    -------
    ndarray float32, ``image``'s shape
        A view of a slice-major buffer: each ``(X, Y)`` slice is contiguous
        in memory (not C order over the whole volume).

    Notes
    -----
    Runs without gradients. A prediction of at least
    :data:`~napari_sizeloss.inference.FOLD_MIN_PIXELS` pixels runs a copy of
    ``model`` with its batch norms folded into its convolutions (same
    logits, float32 rounding apart); a smaller one runs ``model`` itself in
    evaluation mode (the caller restores training mode). glibc's allocator
    is tuned once (:func:`~napari_sizeloss.allocator.tune_allocator`).
    """
    check_tta(tta)
    ndim = image.ndim
    image4 = as_4d(np.asarray(image))
    if normalisation == "auto":
        normalisation = normalisation_params(image4)
    device = torch.device(device) if isinstance(device, str) else device
    X, Y, Z, T = image4.shape
    N = Z * T
    if box is None:
        box = Box(0, X, 0, Y)
    h, w = box.shape
    if fill is None:
        fill = _normalised_minimum(image4, normalisation)
    # the part of the box inside the image, in image and in box coordinates
    sx0, sx1, sy0, sy1 = max(box.x0, 0), min(box.x1, X), max(box.y0, 0), min(box.y1, Y)
    # slice-major (each slice's (X, Y) plane contiguous), so each batch lands in one
    # contiguous copy; scattering it into an (X, Y, N) array, slice index fastest, cost
    # about 0.1 s of a 256x256x10x25 cine (docs/benchmarks.md). Returned as an (X, Y, Z, T) view.
    out = np.zeros((N, X, Y), dtype=np.float32)  # zero outside the box
    volume = out.transpose(1, 2, 0).reshape(X, Y, Z, T)  # a view (n = z * T + t)
    if sx1 <= sx0 or sy1 <= sy0:
        return from_4d(volume, ndim)  # the box misses the image
    bx0, bx1, by0, by1 = sx0 - box.x0, sx1 - box.x0, sy0 - box.y0, sy1 - box.y0
    source = image4.reshape(X, Y, N)  # slice n = z * T + t; a view unless image is not C-ordered
    if batch_size is None:
        batch_size = max(1, PREDICT_PIXELS // max(1, h * w * views_per_pass(tta, square=h == w)))
    tune_allocator()
    if channels_last is None:
        channels_last = forward is None and uses_channels_last(device)
    if forward is None:
        net = inference_model(model, N * h * w, channels_last=channels_last)  # folded when large
        if net is model:
            channels_last = is_channels_last(model)  # never mix layouts: much slower than either
    else:
        net = forward
    # One batch at a time: gather, normalise and pad into a small buffer, then write the
    # probabilities straight into the output. No whole-volume temporaries (a 256x256x10x25
    # cine spent about 0.5 s making and copying them).
    buffer = np.full((batch_size, h, w), fill, dtype=np.float32)
    for start in range(0, N, batch_size):
        n = min(batch_size, N - start)
        inner = buffer[:n, bx0:bx1, by0:by1]
        inner[...] = source[sx0:sx1, sy0:sy1, start : start + n].transpose(2, 0, 1)
        if normalisation is not None:
            normalise(inner, normalisation, out=inner)
        # a compiled forward sees one shape: pad the last batch with copies of its last slice
        batch = buffer if forward is not None else buffer[:n]
        if forward is not None and n < batch_size:
            buffer[n:] = buffer[n - 1]
        x = torch.from_numpy(batch)[:, None].to(device)
        with autocast(device, enabled=amp):
            probs = tta_probabilities(net, x, tta, prepare=to_channels_last if channels_last else None)
        probs = probs[:n, 1].cpu().numpy()  # (n, h, w)
        out[start : start + n, sx0:sx1, sy0:sy1] = probs[:, bx0:bx1, by0:by1]
    return from_4d(volume, ndim)


def _normalised_minimum(image: np.ndarray, normalisation: dict | None) -> float:
    """The smallest intensity of ``image`` once normalised (None: as it is), without normalising the volume.

    Normalising is monotone, so this is the normalised minimum: what a box
    reaching beyond the image is padded with.
    """
    lowest = np.asarray([np.min(image)], dtype=np.float32)
    return float(lowest[0] if normalisation is None else normalise(lowest, normalisation)[0])


@dataclass
class Predictor:
    """A trained model ready to segment other volumes.

    Each volume is normalised on its own (robust min-max), as in training.

    ``compile=True`` predicts through ``torch.compile`` (a batch-norm-folded
    copy of the weights as they are at the first prediction): 1.8-2x faster
    per slice on 2 CPU cores once compiled, after a compile of about 17 s
    (3 s when cached) per in-plane shape; for scripts that predict many
    volumes of one grid (:mod:`napari_sizeloss.compiled`).

    ``tta``: the test-time augmentation (:mod:`napari_sizeloss.tta`), as an
    interactive session's by default; ``"none"`` predicts each slice once
    (4 times fewer forward passes than the default ``"flips"``).
    """

    model: ENet
    device: torch.device
    checkpoint: Checkpoint | None = None
    threshold: float = 0.5
    metadata: dict = field(default_factory=dict)
    compile: bool = False
    tta: str = DEFAULT_TTA
    _compiled: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_tta(self.tta)
        if self.compile:
            from .compiled import require_compile

            require_compile(self.device)

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", compile: bool = False, tta: str = DEFAULT_TTA) -> "Predictor":
        ckpt = load_checkpoint(path)
        model = build_model(ckpt)
        if model.config.get("num_classes") != 2:
            raise ValueError(
                f"checkpoint {Path(path).name} is for a model with {model.config.get('num_classes')} "
                "classes; this tool needs 2 (background, target)"
            )
        dev = select_device(device)
        model.to(dev)
        return cls(model=model, device=dev, checkpoint=ckpt, metadata=dict(ckpt.metadata or {}), compile=compile,
                   tta=tta)

    def region_for(self, image_shape) -> Box | None:
        """The training region of interest when ``image_shape`` matches the
        training image's in-plane shape (same acquisition grid), else None."""
        roi = self.metadata.get("roi")
        shape = self.metadata.get("image_shape")
        if roi is None or shape is None or tuple(shape[:2]) != tuple(image_shape[:2]):
            return None
        return Box.from_list(roi)

    def probabilities(self, image: np.ndarray, box: Box | str | None = "auto") -> np.ndarray:
        """Target probability, float32, ``image``'s shape (X, Y[, Z[, T]]).

        ``box="auto"`` restricts the prediction to the training region of
        interest when the image is on the training grid (:meth:`region_for`);
        ``None`` predicts every pixel.
        """
        image = np.asarray(image)
        if box == "auto":
            box = self.region_for(image.shape)
        return predict_volume(
            self.model, image, normalisation="auto", device=self.device, box=box, forward=self._forward(),
            tta=self.tta,
        )

    def _forward(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The compiled forward pass when ``compile`` (made at the first call), else None (eager)."""
        if not self.compile:
            return None
        if self._compiled is None:
            from .compiled import compiled_predictor

            self._compiled = compiled_predictor(self.model)
        return self._compiled

    def predict(
        self, image: np.ndarray, box: Box | str | None = "auto", anchors: np.ndarray | None = None
    ) -> np.ndarray:
        """Binary mask, uint8 0/1, ``image``'s shape.

        ``anchors`` (bool, ``image``'s shape; e.g. the target dots of a seeds
        volume): keep only the predicted regions connected to one
        (:func:`~napari_sizeloss.connectivity.keep_connected`); None keeps
        every region.
        """
        mask = self.probabilities(image, box) > self.threshold
        if anchors is not None:
            mask = keep_connected_to(mask, anchors)
        return mask.astype(np.uint8)

    def iter_probabilities(
        self,
        image: np.ndarray,
        box: Box | str | None = "auto",
        *,
        first: tuple[int, int] | None = None,
        chunk_slices: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`probabilities` a few slices at a time, for progress and an early look.

        Parameters
        ----------
        image : ndarray (X, Y), (X, Y, Z) or (X, Y, Z, T)
        box : as in :meth:`probabilities`
        first : (z, t), optional
            Predict this slice alone first (the one a viewer shows), then the
            others in their usual order.
        chunk_slices : int, optional
            Slices per chunk; by default enough for batch-norm folding and
            whole prediction batches (32 slices of 256x256).

        Yields
        ------
        slices : ndarray int (n, 2)
            The ``(z, t)`` of each slice of the chunk.
        probabilities : ndarray float32 (X, Y, n)
            Target probability, zero outside ``box``.

        Every slice comes exactly once. The volume is normalised once, on the
        whole image, so the chunks equal :meth:`probabilities` (float32
        rounding apart: a chunk too small to fold its batch norms runs the
        unfolded network). Chunking costs about 1 ms per chunk.
        """
        image = np.asarray(image)
        image4 = as_4d(image)
        if box == "auto":
            box = self.region_for(image.shape)
        X, Y, Z, T = image4.shape
        normalisation = normalisation_params(image4)
        fill = _normalised_minimum(image4, normalisation)  # what probabilities() pads a box beyond the image with
        h, w = box.shape if box is not None else (X, Y)
        if chunk_slices is None:
            batch = max(1, PREDICT_PIXELS // max(1, h * w))
            chunk_slices = batch * max(1, math.ceil(FOLD_MIN_PIXELS / (batch * h * w)))
        order = [(z, t) for z in range(Z) for t in range(T)]
        chunks = []
        if first is not None:
            first = (int(first[0]), int(first[1]))
            if not (0 <= first[0] < Z and 0 <= first[1] < T):
                raise ValueError(f"slice {first} is outside the volume's {Z} slices x {T} frames")
            order.remove(first)
            chunks.append([first])
        chunks += [order[i : i + chunk_slices] for i in range(0, len(order), chunk_slices)]
        forward = self._forward()
        for chunk in chunks:
            slices = np.asarray(chunk, dtype=np.int64).reshape(-1, 2)
            sub = image4[:, :, slices[:, 0], slices[:, 1]][:, :, :, None]  # (X, Y, n, 1)
            probs = predict_volume(
                self.model, sub, normalisation=normalisation, device=self.device, box=box, forward=forward,
                fill=fill, tta=self.tta,
            )
            yield slices, probs[:, :, :, 0]
