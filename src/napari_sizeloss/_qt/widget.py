"""The "Size-constrained segmentation" dock widget.

A user's session: pick the image, click dots (target by default, B for
background), set the size bounds, tag slices where the target is absent,
Train, watch the prediction and the loss terms, Stop, fix the prediction with
napari's brush and eraser, "Use corrections" (trains on from the current
weights), Export masks as NIfTI on the source grid, Save or Load the model and
Predict other volumes.

Threading: training and prediction run in napari thread workers
(:mod:`.jobs`); every layer and widget change happens in the GUI-thread
callbacks below. The worker is stopped (within one step) by Stop, by closing
the widget, by removing the image layer and, through napari's task manager,
by closing the viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from . import autosave
from .annotation import AnnotationMixin
from .bounds_panel import UNIT_TEXT, BoundsPanel
from .layers import (
    ROLE_PREDICTION,
    ROLE_SEEDS,
    VolumeError,
    VolumeGeometry,
    find_companion,
    geometry_of,
    make_seeds_layer,
    world_point,
)
from .loss_plot import LossPlot
from .model_io import ModelIOMixin
from .prediction import PredictionTracker
from .restore import AutosaveMixin
from .seeds import SeedsPanel
from .settings import AdvancedSettings
from .size_table import SizeTable, slice_bounds_in_force
from .supervision import Supervision
from .tags import TagsPanel
from .training import PROGRESS_MS, TrainingMixin

REFRESH_DELAY_MS = 150
LEVEL_COLORS = {"info": "#bdbdbd", "warning": "#ffb300", "error": "#f44336", "success": "#4caf50"}


class SizeLossWidget(AnnotationMixin, TrainingMixin, ModelIOMixin, AutosaveMixin, QWidget):
    """Dock widget: dots + size bounds -> a fine-tuned ENet's segmentation of a cine volume.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (napari passes it when the widget is opened from the
        Plugins menu).
    """

    #: An autosave written in the background failed (the reason); delivered on the GUI thread.
    autosave_failed = Signal(str)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        # napari hands plugins a proxy that inspects the call stack on every
        # attribute access; the widget only uses public API, so it keeps the object.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.geometry: VolumeGeometry | None = None
        self.image_layer = None  # the image being segmented (a valid volume)
        self.chosen_layer = None  # the layer picked in the image box, valid or not
        self.seeds_layer = None
        self.tracker: PredictionTracker | None = None
        self.supervision: Supervision | None = None
        self.session = None
        self.session_image: str | None = None
        self.checkpoint_path: str | None = None
        self.worker = None
        self.job: str | None = None  # "train" | "predict" | "load"
        self._stop_requested = False
        self._closed = False
        self._present = None
        self._fingerprint: str | None = None
        self._pending_work: tuple[Path, autosave.SavedWork] | None = None
        self._backed_up = False
        self._autosave_writer = autosave.AutosaveWriter()
        self._last_round: dict[str, Any] = {}
        self._volume_notes: list[str] = []
        self.last_error: str | None = None
        self._job_failed = False
        self._build()
        self.autosave_failed.connect(self._report_autosave_failure)
        self._connect_viewer()
        self._refresh_layer_choices()
        self._update_buttons()
    # ================================================================ layout
    def _build(self) -> None:
        content = QWidget()
        column = QVBoxLayout(content)

        image_box = QGroupBox("Image")
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The cine volume (T, Z, Y, X) or volume (Z, Y, X) to segment")
        self.image_combo.currentTextChanged.connect(self._on_image_chosen)
        self.image_info = QLabel("open a NIfTI file, or File > Open Sample > Cine MR phantom")
        self.image_info.setWordWrap(True)
        form = QFormLayout(image_box)
        form.addRow("Layer", self.image_combo)
        form.addRow(self.image_info)
        column.addWidget(image_box)

        self.restore_box = QGroupBox("Saved work found")
        self.restore_text = QLabel("")
        self.restore_text.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.ignore_button = QPushButton("Ignore")
        self.restore_button.clicked.connect(self.restore_saved_work)
        self.ignore_button.clicked.connect(self._ignore_saved_work)
        row = QHBoxLayout()
        row.addWidget(self.restore_button)
        row.addWidget(self.ignore_button)
        box = QVBoxLayout(self.restore_box)
        box.addWidget(self.restore_text)
        box.addLayout(row)
        self.restore_box.hide()
        column.addWidget(self.restore_box)

        self.seeds_panel = SeedsPanel()
        self.seeds_panel.kind_changed.connect(self._on_kind_changed)
        self.seeds_panel.layer_changed.connect(self._on_seeds_layer_chosen)
        column.addWidget(self.seeds_panel)

        self.bounds_panel = BoundsPanel()
        self.bounds_panel.bounds_changed.connect(self._on_bounds_changed)
        self.bounds_panel.estimate_requested.connect(self.estimate_bounds)
        self.bounds_panel.labels_combo.currentTextChanged.connect(self._on_estimate_layer_chosen)
        column.addWidget(self.bounds_panel)

        self.tags_panel = TagsPanel()
        self.tags_panel.current_requested.connect(self.tag_current_slice)
        self.tags_panel.tag_requested.connect(self.tag_slices)
        self.tags_panel.clear_requested.connect(self.clear_tags)
        column.addWidget(self.tags_panel)

        train_box = QGroupBox("Training")
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Fine-tune on the dots and bounds (continues from the current model)")
        self.stop_button = QPushButton("Stop")
        self.corrections_button = QPushButton("Use corrections")
        self.corrections_button.setToolTip(
            "Slices you edited in the prediction layer (brush, eraser) become full supervision; trains on"
        )
        self.clear_corrections_button = QPushButton("Forget corrections")
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.corrections_button.clicked.connect(self.use_corrections)
        self.clear_corrections_button.clicked.connect(self.clear_corrections)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.stop_button)
        more = QHBoxLayout()
        more.addWidget(self.corrections_button)
        more.addWidget(self.clear_corrections_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        self.loss_plot = LossPlot()
        box = QVBoxLayout(train_box)
        box.addLayout(buttons)
        box.addLayout(more)
        box.addWidget(self.progress)
        box.addWidget(self.loss_plot)
        column.addWidget(train_box)

        sizes_box = QGroupBox("Predicted size per slice (rows z, columns t)")
        self.size_table = SizeTable()
        self.size_table.slice_clicked.connect(self.go_to_slice)
        self.size_table.tag_requested.connect(self.tag_cells)
        QVBoxLayout(sizes_box).addWidget(self.size_table)
        column.addWidget(sizes_box)

        model_box = QGroupBox("Model and masks")
        self.export_button = QPushButton("Export masks…")
        self.export_button.setToolTip("Write the prediction layer as NIfTI on the image's grid")
        self.save_model_button = QPushButton("Save model…")
        self.load_model_button = QPushButton("Load model…")
        self.reset_model_button = QPushButton("New model")
        self.reset_model_button.setToolTip("Forget the trained or loaded model: the next Train starts from scratch")
        self.reset_model_button.clicked.connect(self.reset_model)
        self.predict_button = QPushButton("Predict")
        self.predict_button.setToolTip("Segment the chosen image with the current (trained or loaded) model")
        self.export_button.clicked.connect(lambda: self.export_masks())
        self.save_model_button.clicked.connect(lambda: self.save_model())
        self.load_model_button.clicked.connect(lambda: self.load_model())
        self.predict_button.clicked.connect(self.predict)
        self.model_info = QLabel("model: new (untrained) ENet")
        self.model_info.setWordWrap(True)
        grid = QVBoxLayout(model_box)
        row1 = QHBoxLayout()
        row1.addWidget(self.save_model_button)
        row1.addWidget(self.load_model_button)
        row1.addWidget(self.reset_model_button)
        row2 = QHBoxLayout()
        row2.addWidget(self.predict_button)
        row2.addWidget(self.export_button)
        grid.addLayout(row1)
        grid.addLayout(row2)
        grid.addWidget(self.model_info)
        column.addWidget(model_box)

        self.settings = AdvancedSettings()
        column.addWidget(self.settings)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        column.addWidget(self.status)
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        # wide enough for every row: the dock takes this width, the panels never scroll sideways
        self.setMinimumWidth(max(470, content.minimumSizeHint().width() + 30))

        self._pending_progress = None
        self._progress_timer = QTimer(self)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.setInterval(PROGRESS_MS)
        self._progress_timer.timeout.connect(self._show_progress)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(autosave.AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.autosave_in_background)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self._refresh_views)

    # =========================================================== messages
    def _message(self, text: str, level: str = "info", notify: bool = True) -> None:
        """Show ``text`` in the widget's status line and, for warnings and errors, as a napari notification."""
        self.status.setText(text)
        self.status.setStyleSheet(f"color: {LEVEL_COLORS.get(level, LEVEL_COLORS['info'])};")
        if level == "error":
            self.last_error = text
        if not notify:
            return
        from napari.utils.notifications import show_error, show_info, show_warning

        {"error": show_error, "warning": show_warning}.get(level, show_info)(text)

    # ======================================================= viewer events
    def _connect_viewer(self) -> None:
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layer_removed)
        layers.events.moved.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_dims_changed)

    def _disconnect_viewer(self) -> None:
        try:
            layers = self.viewer.layers
            layers.events.inserted.disconnect(self._on_layers_changed)
            layers.events.removed.disconnect(self._on_layer_removed)
            layers.events.moved.disconnect(self._on_layers_changed)
            self.viewer.dims.events.current_step.disconnect(self._on_dims_changed)
        except (RuntimeError, AttributeError, TypeError, ValueError):
            pass
        for layer in list(self.viewer.layers):
            try:
                layer.events.name.disconnect(self._on_layers_changed)
            except (RuntimeError, TypeError, ValueError):
                pass
        self._watch_seeds(None)

    def _on_layers_changed(self, event=None) -> None:
        if self._closed:
            return
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self._refresh_layer_choices()

    def _on_layer_removed(self, event) -> None:
        if self._closed:
            return
        removed = event.value
        if removed is self.image_layer or removed is self.chosen_layer:
            if self.job == "train" and self.session is not None:
                self.session.stop()
            self._message(f"image layer {removed.name!r} was removed", "warning", notify=False)
            self._set_image(None)
        elif removed is self.seeds_layer:
            self._watch_seeds(None)
        elif self.tracker is not None and removed is self.tracker.layer:
            self.tracker = None
        self._refresh_layer_choices()

    def _refresh_layer_choices(self) -> None:
        from napari.layers import Image, Labels, Points

        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb]
        current = self.chosen_layer.name if self.chosen_layer is not None else None
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(images)
        if current in images:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_layer is None and images:
            self.image_combo.setCurrentIndex(len(images) - 1)
            self._on_image_chosen(self.image_combo.currentText())

        seeds_names = [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Points) or (isinstance(layer, Labels) and (layer.metadata or {}).get("sizeloss_role") != ROLE_PREDICTION)
        ]
        self.seeds_panel.set_layers(seeds_names, self.seeds_layer.name if self.seeds_layer is not None else None)
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        preferred = None
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and "target_label" in (layer.metadata or {}):
                preferred = layer.name
        self.bounds_panel.set_labels_layers(labels, preferred if not self.bounds_panel.labels_combo.currentText() else None)
        self._on_estimate_layer_chosen(self.bounds_panel.labels_combo.currentText())

    def _on_dims_changed(self, event=None) -> None:
        if self._closed or self.geometry is None:
            return
        z, t = self.current_slice()
        if self.job == "train" and self.session is not None:
            self.session.request_preview(z, t)
        self._show_current_area()

    # ======================================================== image choice
    def _on_image_chosen(self, name: str) -> None:
        if self._closed:
            return
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is not None and layer is self.chosen_layer:
            return
        if self.job == "train":
            self._message("stop training before switching images", "warning")
            self._refresh_layer_choices()
            return
        self._set_image(layer)

    def _set_image(self, layer) -> None:
        """Make ``layer`` the image to segment: geometry, bounds, seeds and prediction layers, saved work."""
        if self.geometry is not None:
            self.autosave_in_background()  # the snapshot is taken now; the disk is not waited for
        self.image_layer = None
        self.chosen_layer = layer
        self.geometry = None
        self.tracker = None
        self.supervision = None
        self._pending_work = None
        self.restore_box.hide()
        self._watch_seeds(None)
        if layer is None:
            self.image_info.setText("open a NIfTI file, or File > Open Sample > Cine MR phantom")
            self._update_buttons()
            return
        try:
            geometry = geometry_of(layer)
        except VolumeError as exc:
            self.image_info.setText(str(exc))
            self._message(str(exc), "warning")
            self._update_buttons()
            return
        self.image_layer = layer
        self.geometry = geometry
        self.supervision = Supervision.empty(geometry.shape)
        X, Y, Z, T = geometry.shape
        spacing = "spacing unknown: sizes in pixels" if geometry.spacing is None else (
            "spacing {:.3g} x {:.3g} x {:.3g} mm".format(*geometry.spacing)
        )
        self.image_info.setText(f"X {X}, Y {Y}, Z {Z} slices, T {T} frames; {spacing}")
        self.bounds_panel.configure(geometry.slice_area, geometry.unit)
        self.tags_panel.set_depth(Z)
        self.size_table.set_shape(Z, T)

        seeds = find_companion(self.viewer, ROLE_SEEDS, geometry.name)
        if seeds is None:
            seeds = make_seeds_layer(geometry, radius=self.settings.dot_radius.value())
            self.viewer.layers.append(seeds)
        self._watch_seeds(seeds)
        # The (empty) prediction layer is made now, not at the first Train press: napari takes
        # 100-400 ms to build a Labels layer, which would freeze the window as training starts.
        self._ensure_prediction_layer()
        self._fingerprint = autosave.fingerprint(layer.data)
        self._offer_saved_work()
        self._activate_seeds_layer()
        self._refresh_layer_choices()
        self._refresh_views()
        self._update_buttons()
        # torch loads on the compute thread now, while the user places dots, rather than at the first
        # Train press (2-3 s later to the first step, with hitches while they watch). Its libraries
        # load first with the interpreter lock released (jobs.loading_torch): the window's longest
        # freeze meanwhile is ~0.1 s, not ~0.35 s (scripts/preload_bench.py).
        self.settings.ensure_loaded()

    def _activate_seeds_layer(self) -> None:
        from napari.layers import Points

        if self.seeds_layer is None:
            return
        self.viewer.layers.selection.active = self.seeds_layer
        if isinstance(self.seeds_layer, Points):
            self.seeds_layer.mode = "add"

    # ============================================================ views
    def _schedule_refresh(self) -> None:
        if not self._closed:
            self._refresh_timer.start()

    def _refresh_views(self) -> None:
        """Dot summary, tag summary, size table and the current slice's area."""
        if self._closed or self.geometry is None:
            return
        n_target, n_background, present, outside = self._count_dots()
        self._present = present
        self.seeds_panel.set_summary(n_target, n_background, int(present.sum()), outside)
        sup = self.supervision
        self.tags_panel.set_summary(int(present.sum()), int(sup.absent.sum()), present.size)
        lower, upper = self.bounds_panel.bounds()
        lo, hi = slice_bounds_in_force(lower, upper, present, sup.absent)
        sizes = None
        if self.tracker is not None and self.tracker.has_prediction:
            sizes = self.geometry.to_area(self.tracker.sizes_px())
        self.size_table.show_sizes(sizes, lo, hi, present, sup.absent, sup.corrected, UNIT_TEXT[self.bounds_panel.unit])
        self._show_current_area()

    def _show_current_area(self) -> None:
        if self.geometry is None or self.supervision is None:
            return
        z, t = self.current_slice()
        lower, upper = self.bounds_panel.bounds()
        present = self.present()
        lo, hi = slice_bounds_in_force(lower, upper, present, self.supervision.absent)
        area = None
        if self.tracker is not None and self.tracker.has_prediction:
            area = float(self.geometry.to_area(self.tracker.slice_size_px(z, t)))
        self.bounds_panel.show_current(z, t, area, float(lo[z, t]), float(hi[z, t]))

    def go_to_slice(self, z: int, t: int) -> None:
        """Show slice ``z`` of frame ``t`` in the viewer."""
        if self.geometry is None:
            return
        offset = self.viewer.dims.ndim - self.geometry.layer_ndim
        for axis, value in world_point(self.geometry, z, t).items():
            self.viewer.dims.set_point(offset + axis, value)

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        has_image = self.geometry is not None
        self.train_button.setEnabled(not busy and has_image)
        self.stop_button.setEnabled(self.job == "train" and not self._stop_requested)
        self.corrections_button.setEnabled(not busy and has_image)
        self.clear_corrections_button.setEnabled(not busy and has_image)
        self.predict_button.setEnabled(not busy and has_image)
        self.export_button.setEnabled(not busy and has_image)
        self.save_model_button.setEnabled(not busy and self.session is not None)
        self.load_model_button.setEnabled(not busy)
        self.reset_model_button.setEnabled(not busy and (self.session is not None or self.checkpoint_path is not None))
        self.image_combo.setEnabled(self.job != "train")
        if not busy:
            self.progress.setRange(0, 1000)
        if busy and self.job == "train":
            self.progress.setValue(0)
            self.progress.setFormat("starting…")

    # ============================================================ closing
    def shutdown(self) -> None:
        """Stop any training, save the user's work and let go of the viewer (idempotent)."""
        if self._closed:
            return
        if self.session is not None:
            self.session.stop()
        if self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:
                pass
        try:
            self.autosave_now()
            self._autosave_writer.flush()  # also when there was nothing new to save
        except Exception:  # never block closing
            pass
        self._closed = True
        self._autosave_timer.stop()
        self._refresh_timer.stop()
        self._disconnect_viewer()

    def changeEvent(self, event) -> None:
        # napari's dock "close" button removes the widget by un-parenting it.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and not self._closed:
            if self.window() is self:
                self.shutdown()
        super().changeEvent(event)

    def hideEvent(self, event) -> None:
        # the viewer closing hides its docks first: make sure nothing is lost
        if not self._closed:
            if self._autosave_timer.isActive():
                self.autosave_now()
            self._autosave_writer.flush()
        super().hideEvent(event)

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)
