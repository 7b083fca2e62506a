"""The work the widget runs in napari thread workers: training and prediction.

These generators and functions touch no layer and no widget; they receive
plain arrays (core order ``(X, Y, Z, T)``) and yield or return plain results,
which the widget applies in GUI-thread callbacks. torch is imported here only
when a job runs.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TrainRequest:
    """Everything one training round needs, snapshot in the GUI thread.

    Attributes
    ----------
    image : ndarray float (X, Y, Z, T)
    seeds : ndarray uint8 (X, Y, Z, T)
        0 unlabelled, 1 target dot, 2 background dot.
    lower, upper : float
        Slice-area bounds in ``unit``.
    unit : {"mm2", "px"}
    spacing : (sx, sy, sz) mm or None
    absent, corrected : ndarray bool (Z, T)
    corrections : ndarray uint8 (X, Y, n)
        The masks of the ``n`` corrected slices, in ``np.argwhere(corrected)``
        order (:func:`~napari_sizeloss._qt.supervision.pack_corrections`): the
        GUI thread copies those slices only, the job rebuilds the volume.
    config : dict
        Overrides of :meth:`TrainConfig.interactive`.
    checkpoint : path or None
        Start from this model when no session exists yet.
    preview : (z, t)
        The slice to preview first.
    """

    image: np.ndarray
    seeds: np.ndarray
    lower: float
    upper: float
    unit: str
    spacing: tuple[float, float, float] | None
    absent: np.ndarray
    corrected: np.ndarray
    corrections: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    preview: tuple[int, int] = (0, 0)


@dataclass
class SessionReady:
    """First item of a training job: the session that is about to run."""

    session: Any  # TrainingSession
    resumed: bool


@dataclass
class VolumePrediction:
    """A whole-volume prediction.

    Attributes
    ----------
    mask : ndarray uint8 (X, Y, Z, T)
        0/1, stored in Fortran order, i.e. laid out in memory as the layer's
        ``(T, Z, Y, X)``: the job builds it in its worker thread, so that the
        GUI thread writes it into the labels layer slice by slice instead of
        transposing the volume while holding the interpreter lock (for a
        256x256x10x25 cine, about 15 ms instead of 70-220 ms).
    sizes_px : ndarray float (Z, T)
        Predicted target area per slice, pixels.
    lower_px, upper_px : ndarray float (Z, T) or None
        The per-slice bounds the last training round used (None for a
        prediction from a loaded model).
    left_out_regions, left_out_px : int
        Predicted regions that no target dot or corrected pixel touches, and
        their pixels over the whole volume, left out of ``mask``
        (:func:`~napari_sizeloss.connectivity.split_by_anchors`); 0 when
        the filter is off.
    """

    mask: np.ndarray
    sizes_px: np.ndarray
    lower_px: np.ndarray | None = None
    upper_px: np.ndarray | None = None
    left_out_regions: int = 0
    left_out_px: int = 0

    def __post_init__(self) -> None:
        self.mask = np.asfortranarray(self.mask)


@dataclass
class PredictionProgress:
    """``done`` of ``total`` slices of a volume predicted; the first report may carry one slice's mask.

    Attributes
    ----------
    done, total : int
    z, t : int or None
        The slice ``mask`` belongs to.
    mask : ndarray uint8 (X, Y) or None
    """

    done: int
    total: int
    z: int | None = None
    t: int | None = None
    mask: np.ndarray | None = None


@contextlib.contextmanager
def loading_torch() -> Iterator[None]:
    """Around work on the compute thread that may import torch for the first time in napari's process.

    torch's largest libraries are loaded first with the interpreter lock
    released (:func:`~napari_sizeloss.torch_preload.preload_torch_libraries`;
    inside the block the import finds them loaded), and garbage collections
    inside scan only the new objects (:func:`~napari_sizeloss.gc_scope.collect_new_objects_only`).
    Once torch is loaded, only the latter does anything.
    """
    from ..gc_scope import collect_new_objects_only
    from ..torch_preload import preload_torch_libraries

    preload_torch_libraries()
    with collect_new_objects_only():
        yield


def probe_devices() -> tuple[list[str], str | None]:
    """The devices torch can use here and why ``torch.compile`` cannot run on the CPU (None: it can).

    Also starts :func:`napari_sizeloss.native_op.start` (the C++ training
    operator, loaded if cached, else built in the background). Imports torch
    and ``torch._dynamo`` (2-3 s the first time), so the widget
    runs it on the compute thread, with collections confined to the new
    objects (see :func:`training_job`).
    """
    with loading_torch():
        from .. import native_op
        from ..compiled import compile_unavailable_reason
        from ..device import available_devices

        # ENet's training operator: loaded now if cached, else built in the background while the
        # user places dots (training runs meanwhile without it: napari_sizeloss.native_op)
        native_op.start()
        return [str(d) for d in available_devices()], compile_unavailable_reason("cpu")


def build_config(overrides: dict[str, Any]):
    """``TrainConfig.interactive(**overrides)``."""
    from ..config import TrainConfig

    return TrainConfig.interactive(**overrides)


def _carry_weights(session) -> str:
    """Save a session's model to a temporary checkpoint and return its path."""
    handle = tempfile.NamedTemporaryFile(prefix="napari-sizeloss-", suffix=".ckpt", delete=False)
    handle.close()
    session.save(handle.name)
    return handle.name


def _prepare_session(request: TrainRequest, session=None):
    """The session a round trains: ``session`` updated, or a new one. Returns ``(session, resumed)``."""
    from ..bounds import SizeBounds
    from ..trainer import TrainingSession
    from .supervision import unpack_corrections

    config = build_config(request.config)
    bounds = SizeBounds(request.lower, request.upper, unit=request.unit)
    supervision = dict(
        seeds=request.seeds,
        bounds=bounds,
        absent=request.absent,
        corrections=unpack_corrections(request.corrections, request.corrected),
        corrected=request.corrected,
    )
    resumed = session is not None and session.config.device == config.device
    if resumed:
        config.seed = session.config.seed
        session.config = config
        session.update(**supervision)
    else:
        checkpoint = request.checkpoint
        carried = None
        if session is not None:
            checkpoint = carried = _carry_weights(session)
        try:
            session = TrainingSession(
                request.image,
                supervision.pop("seeds"),
                supervision.pop("bounds"),
                spacing=request.spacing,
                config=config,
                checkpoint=checkpoint,
                **supervision,
            )
        finally:
            if carried:
                Path(carried).unlink(missing_ok=True)
    return session, resumed


def training_job(request: TrainRequest, session=None) -> Iterator[Any]:
    """Train one round; runs in a thread worker.

    Yields
    ------
    SessionReady
        Once, first: the (new or updated) session, so the GUI can stop it or
        ask it for previews.
    ProgressEvent
        One per step, then the DONE event (``stopped=True`` after Stop).
    VolumePrediction
        Last: the whole volume predicted with the final weights; not when
        the round was stopped before its first step (say, during a compile):
        the weights did not change, so the shown prediction still holds.

    A session that exists and runs on the requested device keeps its weights
    and optimiser and gets the new supervision and settings; otherwise a new
    session starts from ``request.checkpoint`` (or from the old session's
    weights when only the device changed).
    """
    # The first round in a process imports torch and builds a network: well over a million objects
    # join napari's heap, and a full garbage collection of it would freeze the window ~300 ms.
    with loading_torch():
        session, resumed = _prepare_session(request, session)
    yield SessionReady(session=session, resumed=resumed)
    session.request_preview(*request.preview)
    done = None
    for event in session.run():
        done = event
        yield event
    if done is not None and done.step == 0:
        return  # no step taken: an untrained network's prediction would only replace the shown one
    yield session_prediction(session)


def session_prediction(session, keep_connected: bool | None = None, tta: str | None = None) -> VolumePrediction:
    """The session's whole-volume prediction with its per-slice bounds.

    ``keep_connected``, ``tta``: as :meth:`~napari_sizeloss.trainer.TrainingSession.predict`
    (None: the session's setting).
    """
    mask, left_out, n_left_out = session.predict_split(keep_connected=keep_connected, tta=tta)
    mask = np.asarray(mask, dtype=np.uint8)
    mask4 = mask.reshape(mask.shape + (1,) * (4 - mask.ndim))
    lower, upper = session.slice_bounds_px()
    return VolumePrediction(
        mask=mask4,
        sizes_px=mask4.sum(axis=(0, 1)).astype(np.float64),
        lower_px=np.asarray(lower, dtype=np.float64).reshape(mask4.shape[2:]),
        upper_px=np.asarray(upper, dtype=np.float64).reshape(mask4.shape[2:]),
        left_out_regions=int(n_left_out),
        left_out_px=int(np.count_nonzero(left_out)),
    )


def predict_job(
    image: np.ndarray,
    session=None,
    checkpoint: str | None = None,
    same_image: bool = False,
    preview: tuple[int, int] | None = None,
    anchors: np.ndarray | None = None,
    keep_connected: bool = True,
    tta: str | None = None,
) -> Iterator[PredictionProgress]:
    """Predict a whole ``(X, Y, Z, T)`` volume; a generator, run in a thread worker.

    Uses the session itself when ``same_image`` (its region of interest and
    normalisation: under a second for a 256x256x10x25 cine, returned at
    once), else the session's network on ``image`` (normalised on its own),
    else the model in ``checkpoint``. Those two predict a few slices at a
    time (:meth:`~napari_sizeloss.trainer.Predictor.iter_probabilities`).

    Yields
    ------
    PredictionProgress
        After each chunk of slices; the first carries the mask of slice
        ``preview`` (the one on screen), predicted alone before the others.

    With ``keep_connected``, the volume keeps only the regions connected to
    an anchor (:func:`~napari_sizeloss.connectivity.keep_connected`): the
    session's own dots and corrections when ``same_image``, else ``anchors``
    (bool ``image``'s shape: the target dots shown; None keeps every region).
    The preview slice alone keeps the regions that its own anchors touch
    (all of it when it has none).
    ``tta``: the test-time augmentation (:mod:`napari_sizeloss.tta`; None:
    the session's setting, else :data:`~napari_sizeloss.config.DEFAULT_TTA`).

    Returns
    -------
    VolumePrediction
        The whole volume (the worker's ``returned`` value).
    """
    if session is not None and same_image:
        return session_prediction(session, keep_connected=keep_connected, tta=tta)
    from ..connectivity import keep_connected as keep_connected_to
    from ..connectivity import split_by_anchors
    with loading_torch():  # maybe the process's first torch import and network (see training_job)
        from ..config import DEFAULT_TTA
        from ..trainer import Predictor

        if tta is None:
            tta = session.config.tta if session is not None else DEFAULT_TTA
        if session is not None:
            predictor = Predictor(model=session.prediction_model, device=session.device, tta=tta)
        elif checkpoint is not None:
            predictor = Predictor.from_checkpoint(checkpoint, device="auto", tta=tta)
        else:
            raise ValueError("no model yet: train one or load one with Load model")
    mask = np.zeros(image.shape, dtype=np.uint8, order="F")
    total, done = image.shape[2] * image.shape[3], 0
    for slices, probs in predictor.iter_probabilities(image, first=preview):
        mask[:, :, slices[:, 0], slices[:, 1]] = probs > predictor.threshold
        done += len(slices)
        if preview is not None and done == 1:
            z, t = preview
            shown = mask[:, :, z, t].copy()
            if keep_connected and anchors is not None:  # the slice alone: the regions its own dots touch
                shown = keep_connected_to(shown, anchors[:, :, z, t]).astype(np.uint8)
            yield PredictionProgress(done, total, z=z, t=t, mask=shown)
        else:
            yield PredictionProgress(done, total)
    n_left_out = px_left_out = 0
    if keep_connected and anchors is not None:
        kept, left_out, n_left_out = split_by_anchors(mask, anchors)
        mask = kept.astype(np.uint8)  # VolumePrediction lays it out in Fortran order
        px_left_out = int(np.count_nonzero(left_out))
    return VolumePrediction(mask=mask, sizes_px=mask.sum(axis=(0, 1)).astype(np.float64),
                            left_out_regions=int(n_left_out), left_out_px=px_left_out)


def check_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint to check it fits this tool (1 input channel, 2 classes).

    Returns a short description (``steps``, ``image_shape``...) from its
    metadata; raises the core's ``CheckpointError`` / ``ValueError`` with a
    message naming the file otherwise.
    """
    with loading_torch():  # maybe the process's first torch import and network (see training_job)
        from ..trainer import Predictor

        predictor = Predictor.from_checkpoint(path, device="cpu")
    config = getattr(predictor.model, "config", {}) or {}
    if config.get("in_channels", 1) != 1:
        raise ValueError(
            f"checkpoint {Path(path).name} expects {config.get('in_channels')} input channels; this tool gives 1"
        )
    return dict(predictor.metadata or {})
