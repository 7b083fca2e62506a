"""Training, stopping and corrections: the widget's thread-worker side.

Mixed into :class:`~napari_sizeloss._qt.widget.SizeLossWidget`. A training
round snapshots the dots, bounds, tags and corrections in the GUI thread,
runs :func:`~napari_sizeloss._qt.jobs.training_job` in a napari thread worker,
and applies what it yields (progress, previews, the final volume) in
GUI-thread callbacks. Stop asks the session to return after the current step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..compute_thread import run_generator
from .bounds_panel import UNIT_TEXT
from .jobs import PredictionProgress, SessionReady, TrainRequest, VolumePrediction, training_job
from .layers import ROLE_PREDICTION, SeedsShapeError, VolumeError, find_companion, geometry_of, make_prediction_layer
from .prediction import PredictionTracker

#: Shortest interval between progress-bar redraws while training (ms).
PROGRESS_MS = 500


def format_seconds(seconds: float | None) -> str:
    """``m:ss`` (``"?"`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def left_out_note(regions: int, pixels: int) -> str:
    """The status line's words for predicted regions the *Keep* filter left out of the layer."""
    return (f"left out {regions} predicted region{'s' if regions != 1 else ''} ({pixels:,} px) that no target "
            "dot touches (Advanced settings > Keep)")


class TrainingMixin:
    """Train / Stop / Use corrections and the worker callbacks."""

    # ============================================================ training
    def _snapshot_request(self) -> TrainRequest:
        """Everything a training round needs, checked; raises ValueError with a user message."""
        if self.geometry is None or self.image_layer is None:
            geometry_of(self.chosen_layer)  # raises the right message
            raise VolumeError("choose an image layer first")
        problem = self.bounds_panel.problem()
        if problem:
            raise ValueError(problem)
        seeds = self.seeds_array()
        present = self.present()  # counted by seeds_array
        conflict = present & self.supervision.absent
        if conflict.any():
            z, t = (int(v) for v in np.argwhere(conflict)[0])
            raise ValueError(f"slice z={z}, t={t} has target dots but is tagged absent: unmark it or remove the dots")
        lower, upper = self.bounds_panel.bounds()
        image = self.geometry.to_core(np.asarray(self.image_layer.data))
        sup = self.supervision
        return TrainRequest(
            image=image,
            seeds=seeds,
            lower=lower,
            upper=upper,
            unit=self.bounds_panel.unit,
            spacing=self.geometry.spacing,
            absent=sup.absent.copy(),
            corrected=sup.corrected.copy(),
            corrections=sup.packed_corrections(),
            config=self.settings.overrides(),
            checkpoint=self.checkpoint_path,
            preview=self.current_slice(),
        )

    def train(self) -> bool:
        """Start a training round in a thread worker; returns False (with a message) when it cannot."""
        if self.worker is not None:
            self._message("busy: wait for the current job or press Stop", "warning")
            return False
        try:
            request = self._snapshot_request()
        except (ValueError, SeedsShapeError) as exc:
            self._message(str(exc), "error")
            return False
        from napari.qt.threading import create_worker

        session = self.session
        if session is not None and self.session_image != self.geometry.name:
            # The model was trained on another image: a new session starts from its weights.
            job = self._carry_job(request, session)()
        else:
            job = training_job(request, session=session)
        # the job's body runs on the one compute thread (see napari_sizeloss.compute_thread)
        worker = create_worker(run_generator, job, _start_thread=False, _ignore_errors=True)
        self._stop_requested = False
        self._last_round = {"started": time.perf_counter(), "steps": 0, "images_per_s": 0.0}
        self._ensure_prediction_layer()
        self.loss_plot.start_round()
        self._run(worker, "train")
        if request.config.get("compile"):
            self.progress.setFormat("compiling…")  # until the first step (minutes when not cached)
            self._message("compiling the network in a background process, then training… "
                          "(1-2 minutes the first time for this crop size; Stop cancels)", notify=False)
        else:
            self._message("training… (Stop ends it after the current step)", notify=False)
        return True

    @staticmethod
    def _carry_job(request: TrainRequest, session):
        """Training job that starts a new session on this image from ``session``'s weights."""

        def job():
            import tempfile

            with tempfile.TemporaryDirectory(prefix="napari-sizeloss-") as tmp:
                path = str(Path(tmp) / "carry.ckpt")
                session.save(path)
                request.checkpoint = path
                yield from training_job(request, session=None)

        return job

    def _run(self, worker, job: str) -> None:
        self.worker = worker
        self.job = job
        self._volume_notes = []  # what applying the job's volume found, said when the job ends
        from napari.qt.threading import GeneratorWorker

        if isinstance(worker, GeneratorWorker):
            worker.yielded.connect(self._on_worker_item)
        worker.returned.connect(self._on_worker_item)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_worker_finished)
        self._update_buttons()
        worker.start()

    def stop(self) -> None:
        """Ask training to stop after the current step (the volume is then predicted once)."""
        if self.job != "train":
            return
        self._stop_requested = True
        if self.session is not None:
            self.session.stop()
        self.stop_button.setEnabled(False)
        self.progress.setFormat(self.progress.format() + " · stopping…")

    def _on_worker_item(self, item) -> None:
        if self._closed or item is None:
            return
        if isinstance(item, SessionReady):
            self.session = item.session
            self.session_image = self.geometry.name if self.geometry else None
            self.checkpoint_path = None
            if self._stop_requested:
                self.session.stop()
            self._on_dims_changed()
            return
        if isinstance(item, VolumePrediction):
            self._apply_volume(item)
            return
        if isinstance(item, PredictionProgress):
            self._on_prediction_progress(item)
            return
        if isinstance(item, dict) and item.get("kind") == "checkpoint":
            self._on_model_loaded(item)
            return
        self._on_progress(item)

    def _on_progress(self, event) -> None:
        kind = getattr(event.kind, "value", event.kind)
        if kind == "done":
            self._pending_progress = None
            steps = event.step
            self._last_round.update(steps=steps, images_per_s=event.images_per_s, elapsed_s=event.elapsed_s)
            verb = "stopped" if event.stopped else "done"
            self.progress.setValue(self.progress.maximum() if not event.stopped else self.progress.value())
            predicting = " · predicting volume…" if steps else ""  # no step: nothing new to predict
            self.progress.setFormat(
                f"{verb}: {steps} steps in {format_seconds(event.elapsed_s)} · {event.images_per_s:.1f} img/s{predicting}"
            )
            return
        # The bar is redrawn at most every PROGRESS_MS: QProgressBar repaints
        # synchronously on each new value, and in a window holding napari's
        # OpenGL canvas every repaint recomposites the whole window, which
        # costs the training thread CPU on a small machine (with software GL
        # under Xvfb on 2 cores, most of the GUI thread's time during
        # training is this composition; scripts/gui_bench.py).
        self._pending_progress = event
        if not self._progress_timer.isActive():
            self._progress_timer.start()
        self.loss_plot.append(event.ce, event.size)
        if event.preview is not None:
            self._show_model_slice(event.preview.z, event.preview.t, event.preview.mask)

    def _show_model_slice(self, z: int, t: int, mask_xy: np.ndarray) -> None:
        """Put the model's mask ``(X, Y)`` of slice ``(z, t)`` on the prediction layer (not over edits or corrections)."""
        if self.tracker is not None and self.tracker.write_slice(z, t, mask_xy, protected=self.supervision.corrected):
            self._show_current_area()

    def _show_progress(self) -> None:
        """Show the latest step event on the progress bar (timer slot)."""
        event, self._pending_progress = self._pending_progress, None
        if event is None or self._closed or self.job != "train":
            return
        fraction = event.fraction
        if fraction is not None:
            self.progress.setValue(int(round(fraction * self.progress.maximum())))
        total = f"/{event.total_steps}" if event.total_steps else ""
        self.progress.setFormat(
            f"step {event.step}{total} · {event.images_per_s:.1f} img/s · ETA {format_seconds(event.eta_s)}"
        )

    def _apply_volume(self, prediction: VolumePrediction) -> None:
        if self.geometry is None:
            return
        self._ensure_prediction_layer()
        kept = self.tracker.write_volume(prediction.mask, protected=self.supervision.corrected)
        self.tracker.show_corrections(self.supervision.corrections, self.supervision.corrected)
        edited = kept & ~self.supervision.corrected
        notes = []
        if prediction.left_out_regions:
            notes.append(left_out_note(prediction.left_out_regions, prediction.left_out_px))
        if edited.any():
            notes.append(f"kept your edits on {int(edited.sum())} slice(s); press Use corrections to train on them")
        self._volume_notes = notes
        if notes:
            self._message("; ".join(notes), notify=False)
        self._refresh_views()

    def _on_worker_error(self, exc: BaseException) -> None:
        self._job_failed = True
        if isinstance(exc, ValueError):
            text = str(exc)
        else:
            text = f"{self.job or 'job'} failed: {type(exc).__name__}: {exc}"
        self._message(text, "error")

    def _on_worker_finished(self) -> None:
        job = self.job
        self.worker = None
        self.job = None
        self._stop_requested = False
        failed, self._job_failed = self._job_failed, False
        if self._closed:
            return
        if job == "train":
            steps = self._last_round.get("steps", 0)
            if self.progress.format().endswith("predicting volume…"):
                self.progress.setFormat(self.progress.format().replace(" · predicting volume…", ""))
            self._update_model_info()
            if steps and not failed:
                self._message("; ".join([f"trained {steps} steps", *self._volume_notes,
                                         "edit the prediction and press Use corrections, or Export masks"]),
                              "success", notify=False)
            elif not failed:
                self._message("stopped before the first step: the network and its prediction are unchanged",
                              notify=False)
        elif job == "predict":
            self.progress.setFormat("prediction done" if not failed else "prediction failed")
            if not failed and self.geometry is not None:
                self._message("; ".join([f"predicted {self.geometry.name!r}", *self._volume_notes,
                                         "edit the prediction and Export masks, "
                                         "or add dots and Train to adapt the model to this image"]),
                              "success", notify=False)
        self._update_buttons()  # back to the bar's idle range
        if job == "predict":
            self.progress.setValue(0 if failed else self.progress.maximum())
        self._schedule_autosave()

    # ========================================================= corrections
    def _ensure_prediction_layer(self) -> None:
        if self.geometry is None:
            return
        if self.tracker is not None and self.tracker.layer in self.viewer.layers:
            return
        layer = find_companion(self.viewer, ROLE_PREDICTION, self.geometry.name)
        if layer is None or layer.data.shape != self.geometry.layer_shape:
            layer = make_prediction_layer(self.geometry)
            seeds = self.seeds_layer
            self.viewer.layers.append(layer)
            if seeds is not None and seeds in self.viewer.layers:
                # keep the dots drawn above the prediction
                self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(seeds))
                self.viewer.layers.selection.active = seeds
        self.tracker = PredictionTracker(layer, self.geometry)
        if self.supervision is not None:
            self.tracker.show_corrections(self.supervision.corrections, self.supervision.corrected)

    def edited_slices(self) -> np.ndarray:
        """bool ``(Z, T)``: slices of the prediction layer the user changed since the model wrote them."""
        if self.tracker is None:
            Z, T = self.geometry.shape[2:] if self.geometry else (0, 0)
            return np.zeros((Z, T), dtype=bool)
        return self.tracker.edited()

    def use_corrections(self) -> bool:
        """Turn every edited slice of the prediction layer into full supervision, then train on."""
        if self.worker is not None:
            self._message("busy: stop training before using corrections", "warning")
            return False
        if self.geometry is None or self.tracker is None:
            self._message("no prediction to correct yet: train first", "error")
            return False
        edited = self.edited_slices()
        if not edited.any():
            self._message(
                "no edited slices: fix the prediction layer with napari's brush or eraser first", "error"
            )
            return False
        n = self.supervision.use_corrections(self.tracker.mask_core(edited), edited)
        self.supervision.absent[edited] = False
        self.tracker.accept(edited)
        self._message(f"{n} corrected slice(s) will be used as full supervision", notify=False)
        self._admit_corrected_areas()
        self._refresh_views()
        self.autosave_in_background()
        return self.train()

    def _admit_corrected_areas(self) -> None:
        """Widen the bounds so that every corrected slice's area lies within them (with a notification).

        A slice drawn in full is the target's true area on this image; bounds
        that leave it out (typically an upper bound from a smaller subject,
        below the largest basal slices) would keep pushing every slice like
        it below the size the network is being taught there
        (:func:`~napari_sizeloss.bounds.widen_to_admit`).
        """
        from ..bounds import BoundsError, SizeBounds, widen_to_admit

        if self.bounds_panel.problem():
            return  # Train refuses these bounds with its own message
        sup = self.supervision
        areas = sup.corrections[:, :, sup.corrected].sum(axis=(0, 1))
        lower, upper = self.bounds_panel.bounds()
        unit = self.bounds_panel.unit
        spacing = self.geometry.spacing[:2] if self.geometry.spacing else None
        try:
            widened = widen_to_admit(SizeBounds(lower, upper, unit), areas, spacing)
        except BoundsError as exc:  # defensive: the panel's bounds are valid here
            self._message(str(exc), "error")
            return
        if (widened.lower, widened.upper) == (lower, upper):
            return
        scale = 10 ** self.bounds_panel.upper_spin.decimals()  # shown rounded outwards, never inside
        new_lower = math.floor(widened.lower * scale) / scale if widened.lower < lower else lower
        new_upper = math.ceil(widened.upper * scale) / scale if widened.upper > upper else upper
        self.bounds_panel.set_bounds(new_lower, new_upper)
        new_lower, new_upper = self.bounds_panel.bounds()
        shown, d = UNIT_TEXT[unit], self.bounds_panel.upper_spin.decimals()  # as the spin boxes show them
        changes = []
        if new_upper > upper:
            changes.append(f"upper bound raised from {upper:.{d}f} to {new_upper:.{d}f} {shown}")
        if new_lower < lower:
            changes.append(f"lower bound lowered from {lower:.{d}f} to {new_lower:.{d}f} {shown}")
        self._message(f"{' and '.join(changes)}: a corrected slice lies outside the bounds", "info")

    def clear_corrections(self) -> None:
        if self.supervision is not None and self.supervision.corrected.any():
            self.supervision.clear_corrections()
            self._message("corrections forgotten (the next round trains on dots and bounds only)", notify=False)
            self._refresh_views()
            self._schedule_autosave()

