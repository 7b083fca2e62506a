"""Model files, prediction and export: Save model, Load model, Predict, Export masks.

Mixed into :class:`~napari_sizeloss._qt.widget.SizeLossWidget`. Checkpoints
use the core's safe format (:mod:`napari_sizeloss.checkpoint`); loading and
predicting run in napari thread workers; export goes through the plugin's
NIfTI writer, so masks land on the source image's grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ..compute_thread import call, run_generator
from . import autosave
from .jobs import PredictionProgress, check_checkpoint, predict_job
from .layers import VolumeError, geometry_of


class ModelIOMixin:
    """Predict, Save model, Load model and Export masks."""

    # ============================================================ predict
    def _anchors(self) -> np.ndarray | None:
        """bool ``(X, Y, Z, T)``: the target dots and corrected target pixels shown; None when there are none.

        Corrected slices anchor on their own: a loaded model on an image
        whose slices were corrected but that has no dot keeps the regions
        the corrections touch.
        """
        from ..connectivity import anchors_from

        sup = self.supervision
        try:
            seeds = self.seeds_array()
        except ValueError:  # no dots (a loaded model on a fresh image)
            if sup is None or not sup.corrected.any():
                return None  # nothing says where the target is: keep every region
            seeds = np.zeros(sup.corrections.shape, dtype=np.uint8)
        return anchors_from(seeds, sup.corrections, sup.corrected) if sup is not None else anchors_from(seeds)

    def predict(self) -> bool:
        """Segment the chosen image with the current model (trained here or loaded)."""
        if self.worker is not None:
            self._message("busy: wait for the current job", "warning")
            return False
        if self.geometry is None:
            self._message(str(self._geometry_problem()), "error")
            return False
        if self.session is None and self.checkpoint_path is None:
            self._message("no model yet: train one, or Load model…", "error")
            return False
        from napari.qt.threading import create_worker

        image = self.geometry.to_core(np.asarray(self.image_layer.data))
        same = self.session is not None and self.session_image == self.geometry.name
        keep = self.settings.keep_connected.isChecked()
        job = predict_job(
            image,
            session=self.session,
            checkpoint=None if self.session is not None else self.checkpoint_path,
            same_image=same,
            preview=self.current_slice(),
            anchors=self._anchors() if keep and not same else None,
            keep_connected=keep,
            tta=self.settings.tta_mode(),
        )
        # the job's body runs on the one compute thread (see napari_sizeloss.compute_thread)
        worker = create_worker(run_generator, job, _start_thread=False, _ignore_errors=True)
        self._ensure_prediction_layer()
        self._run(worker, "predict")
        self.progress.setRange(0, 0)  # busy indicator until the first slice is done
        self._message(f"predicting {self.geometry.name!r}…", notify=False)
        return True

    def _on_prediction_progress(self, item: PredictionProgress) -> None:
        """Show the slice on screen as soon as it is predicted, and how far the volume is."""
        if item.mask is not None:
            self._show_model_slice(item.z, item.t, item.mask)
        self.progress.setRange(0, item.total)
        self.progress.setValue(item.done)
        self.progress.setFormat(f"predicting: {item.done}/{item.total} slices")

    def _geometry_problem(self) -> str:
        try:
            geometry_of(self.chosen_layer)
        except VolumeError as exc:
            return str(exc)
        return "choose an image layer first"

    # ======================================================= model files
    def save_model(self, path: str | None = None) -> str | None:
        """Write the current model (weights, optimiser, config, normalisation, bounds) to a checkpoint."""
        if self.session is None:
            self._message("no trained model to save yet: train first", "error")
            return None
        if self.worker is not None:
            self._message("busy: stop training before saving the model", "warning")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save model", str(self._default_dir() / f"{self.session_image or 'model'}_sizeloss.ckpt"),
                "napari-sizeloss checkpoint (*.ckpt)",
            )
            if not path:
                return None
        try:
            written = call(self.session.save, path)  # torch work stays on the compute thread
        except (ValueError, OSError) as exc:
            self._message(f"cannot save the model to {path}: {exc}", "error")
            return None
        self._message(f"model saved to {written}", "success", notify=False)
        return str(written)

    def load_model(self, path: str | None = None) -> bool:
        """Check and load a checkpoint (in a worker); the next Train and Predict use it."""
        if self.worker is not None:
            self._message("busy: wait for the current job", "warning")
            return False
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Load model", str(self._default_dir()), "napari-sizeloss checkpoint (*.ckpt);;All files (*)"
            )
            if not path:
                return False
        from napari.qt.threading import create_worker

        def job():
            return {"kind": "checkpoint", "path": str(path), "metadata": check_checkpoint(str(path))}

        self._run(create_worker(call, job, _start_thread=False, _ignore_errors=True), "load")
        return True

    def _on_model_loaded(self, item: dict) -> None:
        self.checkpoint_path = item["path"]
        self.session = None
        self.session_image = None
        meta = item.get("metadata") or {}
        steps = meta.get("steps")
        shape = meta.get("image_shape")
        detail = ", ".join(
            part for part in (f"{steps} steps" if steps else "", f"trained on {tuple(shape)}" if shape else "") if part
        )
        self.model_info.setText(f"model: {Path(self.checkpoint_path).name}" + (f" ({detail})" if detail else ""))
        self._message(f"model loaded from {self.checkpoint_path}; Predict or Train to continue from it", "success", notify=False)

    def reset_model(self) -> None:
        """Forget the current model; the next Train starts from a new ENet."""
        if self.worker is not None:
            self._message("busy: stop training first", "warning")
            return
        self.session = None
        self.session_image = None
        self.checkpoint_path = None
        self.model_info.setText("model: new (untrained) ENet")
        self._message("the next Train starts from a new model", notify=False)
        self._update_buttons()

    def _update_model_info(self) -> None:
        if self.session is not None:
            steps = getattr(self.session, "total_steps_done", None)
            device = getattr(self.session, "device", "")
            self.model_info.setText(f"model: trained here on {self.session_image!r}, {steps} steps, device {device}")

    # ============================================================= export
    def _default_dir(self) -> Path:
        source = self.geometry.source_path if self.geometry else None
        if source and autosave.dir_writable(Path(source).parent):
            return Path(source).parent
        return Path.cwd()

    def default_export_path(self) -> Path:
        """``<image>_mask.nii.gz`` beside the source image (or in the working directory)."""
        stem = self.geometry.name if self.geometry else "mask"
        return self._default_dir() / f"{stem}_mask.nii.gz"

    def export_masks(self, path: str | None = None) -> str | None:
        """Write the prediction layer (with your edits) as NIfTI on the source image's grid.

        Never overwrites the source image; an unwritable path gives a message.
        """
        if self.geometry is None or self.tracker is None or not self.tracker.has_prediction:
            self._message("nothing to export yet: train or predict first", "error")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export masks", str(self.default_export_path()), "NIfTI (*.nii.gz *.nii)"
            )
            if not path:
                return None
        from .._writer import write_labels

        layer = self.tracker.layer
        meta = {"name": layer.name, "metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate}
        try:
            [written] = write_labels(str(path), np.asarray(layer.data), meta)
        except (ValueError, OSError) as exc:
            self._message(str(exc), "error")
            return None
        self._message(f"masks written to {written}", "success", notify=False)
        return written

