"""The folded "Advanced settings" panel: training budget, optimiser, loss, device, crop.

Nothing here imports torch on the GUI thread. When the widget gets an image
(or the panel is first unfolded) the defaults are read from
``TrainConfig.interactive()`` (torch-free), and the device list, from
``napari_sizeloss.device.available_devices()``, and whether
``torch.compile`` can run come from the compute thread, which imports torch
meanwhile (the panel offers ``auto`` and ``cpu`` until then). Until the
panel is loaded :meth:`AdvancedSettings.overrides` is empty, so training
uses the interactive defaults.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..config import DEFAULT_TTA, PENALTIES, TTA_MODES, TrainConfig


_PROBE_PENDING = object()  # ``_devices`` from the panel's loading until its timer's first tick submits the probe

#: How each test-time mode reads in the panel.
_TTA_VIEWS = {"none": "1 pass", "flips": "4 views", "dihedral": "8 views"}


class AdvancedSettings(QCollapsible):
    """Folded training settings; :meth:`overrides` gives ``TrainConfig`` keyword arguments."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Advanced settings", parent)
        self._loaded = False
        self._devices = None  # the compute thread's (devices, compile check), a Future until shown
        self._devices_timer = QTimer(self)
        self._devices_timer.setInterval(100)
        self._devices_timer.timeout.connect(self._show_devices)
        body = QWidget()
        form = QFormLayout(body)

        self.budget_kind = QComboBox()
        self.budget_kind.addItems(["steps", "minutes"])
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.05, 24 * 60)
        self.minutes.setDecimals(2)
        self.minutes.setValue(2.0)
        self.minutes.hide()
        budget = QHBoxLayout()
        budget.addWidget(self.budget_kind)
        budget.addWidget(self.steps, stretch=1)
        budget.addWidget(self.minutes, stretch=1)
        self.budget_kind.currentTextChanged.connect(self._budget_kind_changed)
        form.addRow("Budget", budget)

        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(5e-4)
        form.addRow("Learning rate", self.lr)

        self.resume_lr = QDoubleSpinBox()
        self.resume_lr.setDecimals(2)
        self.resume_lr.setRange(0.01, 1.0)
        self.resume_lr.setSingleStep(0.05)
        self.resume_lr.setPrefix("x ")
        self.resume_lr.setToolTip(
            "Train again, Use corrections and a loaded model continue trained weights at the learning rate "
            "times this. Lower refines more gently: on 8 demo cases 0.25 kept the live previews of a "
            "corrections round steadier (its worst mid-round Dice 0.87 instead of 0.83) for the same final "
            "Dice. 1 relearns at the full rate."
        )
        form.addRow("Continue at", self.resume_lr)

        self.size_weight = QDoubleSpinBox()
        self.size_weight.setDecimals(4)
        self.size_weight.setRange(0.0, 100.0)
        self.size_weight.setSingleStep(0.005)
        self.size_weight.setToolTip("Weight of the size penalty (the paper: 0.01); 0 trains on the dots alone")
        form.addRow("Size weight", self.size_weight)

        self.penalty = QComboBox()
        self.penalty.addItems(PENALTIES)
        self.penalty.setToolTip("quadratic: the paper's eq. (3); log-barrier: Kervadec et al. 2019")
        form.addRow("Penalty", self.penalty)

        self.device = QComboBox()
        self.device.addItem("auto")
        self.device.setToolTip("Only the devices torch can use on this machine are offered")
        form.addRow("Device", self.device)

        self.crop = QSpinBox()
        self.crop.setRange(0, 4096)
        self.crop.setSpecialValueText("whole slices")
        self.crop.setSuffix(" px")
        self.crop.setToolTip("Train and predict on a region of at least this side around the dots (0: whole slices)")
        form.addRow("Crop", self.crop)

        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 256)
        form.addRow("Batch size", self.batch_size)

        self.augment = QCheckBox("flips, rotations, intensity")
        form.addRow("Augment", self.augment)

        self.preview_every = QSpinBox()
        self.preview_every.setRange(1, 10_000)
        self.preview_every.setSuffix(" steps")
        self.preview_interval = QDoubleSpinBox()
        self.preview_interval.setDecimals(1)
        self.preview_interval.setRange(0.0, 60.0)
        self.preview_interval.setSingleStep(0.5)
        self.preview_interval.setPrefix("≥ ")
        self.preview_interval.setSuffix(" s")
        self.preview_interval.setToolTip(
            "Live previews of the slice on screen come every this many steps and at least this many seconds "
            "apart (0: no floor). Each costs training a forward pass of one slice and the window a redraw; "
            "on a fast GPU every 10 steps would be dozens a second."
        )
        preview = QHBoxLayout()
        preview.addWidget(self.preview_every, stretch=1)
        preview.addWidget(self.preview_interval, stretch=1)
        form.addRow("Preview every", preview)

        self.compile = QCheckBox("torch.compile (slow first round)")
        self.compile.setToolTip(
            "Compile the network: about 1.5-2x faster steps, but the first round waits 1-2 minutes on a "
            "laptop CPU while a background process compiles it (seconds when cached), and again for a new "
            "crop size; loading the compiled network can pause the window for a fraction of a second. "
            "Worth it for long budgets; Stop cancels the compile."
        )
        form.addRow("Compile", self.compile)

        self.keep_connected = QCheckBox("only regions connected to target dots")
        self.keep_connected.setChecked(True)
        self.keep_connected.setToolTip(
            "The prediction layer keeps only the predicted regions that a target dot or a corrected target "
            "pixel touches, through neighbouring slices and frames; a second bright structure beside the "
            "target (the aorta beside the left ventricle, say) is dropped. Unchecked: every region the "
            "network predicts."
        )
        form.addRow("Keep", self.keep_connected)

        self.tta = QComboBox()
        for mode in TTA_MODES:
            self.tta.addItem(f"{mode} ({_TTA_VIEWS[mode]})", mode)
        self.set_tta_mode(DEFAULT_TTA)
        self.tta.setToolTip(
            "Test-time augmentation of previews and predictions: average each slice over its 4 flips "
            "(flips), its 8 flips and quarter turns (dihedral), or predict it once (none). The network "
            "trained on all of them. On 16 demo cases flips raised the 3D Dice by 0.013 on average, at 4 "
            "times the prediction time (see docs/benchmarks.md)."
        )
        form.addRow("Test-time views", self.tta)

        self.dot_radius = QSpinBox()
        self.dot_radius.setRange(0, 10)
        self.dot_radius.setValue(1)
        self.dot_radius.setSuffix(" px")
        self.dot_radius.setToolTip("Each dot supervises a disc of this radius (0: one pixel)")
        form.addRow("Dot radius", self.dot_radius)

        holder = QWidget()
        QVBoxLayout(holder).addWidget(body)
        self.addWidget(holder)
        self.toggled.connect(self._on_toggled)

    # ----------------------------------------------------------------- API
    def ensure_loaded(self) -> None:
        """Fill in the defaults of ``TrainConfig.interactive()``; the devices follow from the compute thread."""
        if self._loaded:
            return
        cfg = TrainConfig.interactive()
        self.steps.setValue(int(cfg.steps or 300))
        if cfg.minutes:
            self.minutes.setValue(float(cfg.minutes))
        self.lr.setValue(float(cfg.lr))
        self.resume_lr.setValue(float(cfg.resume_lr_factor))
        self.size_weight.setValue(float(cfg.size_weight))
        self.penalty.setCurrentText(cfg.penalty)
        self.crop.setValue(int(cfg.crop or 0))
        self.batch_size.setValue(int(cfg.batch_size))
        self.augment.setChecked(bool(cfg.augment))
        self.preview_every.setValue(int(cfg.preview_every or 10))
        self.preview_interval.setValue(float(cfg.preview_interval_s))
        self.compile.setChecked(bool(cfg.compile))
        self.set_tta_mode(cfg.tta)
        self.device.clear()
        self.device.addItems(["auto", "cpu"])  # until the compute thread has looked
        self._loaded = True
        # The probe (torch's first import) starts at the timer's first tick, after the event loop
        # has run: the widget gets here as an image arrives, and napari then draws it and the new
        # layers for the first time (~0.4 s of GUI-thread work on 2 cores), which an import
        # started now, competing for the interpreter lock and the cores, stretched to ~1 s.
        self._devices = _PROBE_PENDING
        self._devices_timer.start()

    def _show_devices(self) -> None:
        """Timer slot: the first tick submits the device probe; a later one puts its answer in the panel."""
        if self._devices is _PROBE_PENDING:
            from ..compute_thread import submit
            from .jobs import probe_devices

            self._devices = submit(probe_devices)
            return
        if self._devices is None or not self._devices.done():
            return
        self._devices_timer.stop()
        future, self._devices = self._devices, None
        try:
            devices, reason = future.result()
        except Exception:  # noqa: BLE001 - torch unusable here: training will say why, in one line
            return
        if reason is not None and not any(d.startswith("cuda") for d in devices):
            self.compile.setChecked(False)
            self.compile.setEnabled(False)
            self.compile.setToolTip(reason.replace("drop --compile", "unavailable here"))
        chosen = self.device.currentText()
        self.device.clear()
        self.device.addItem("auto")
        for name in devices:
            if name != "auto":
                self.device.addItem(name)
        if self.device.findText(chosen) >= 0:
            self.device.setCurrentText(chosen)

    @property
    def devices_known(self) -> bool:
        """Whether the device list comes from torch yet (not the ``auto``/``cpu`` placeholder)."""
        return self._loaded and self._devices is None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def overrides(self) -> dict[str, Any]:
        """``TrainConfig`` keyword arguments set here (empty until the panel was loaded)."""
        if not self._loaded:
            unloaded: dict[str, Any] = {} if self.keep_connected.isChecked() else {"keep_connected": False}
            if self.tta_mode() != DEFAULT_TTA:
                unloaded["tta"] = self.tta_mode()
            return unloaded
        by_steps = self.budget_kind.currentText() == "steps"
        return {
            "steps": int(self.steps.value()) if by_steps else None,
            "minutes": None if by_steps else float(self.minutes.value()),
            "lr": float(self.lr.value()),
            "resume_lr_factor": float(self.resume_lr.value()),
            "size_weight": float(self.size_weight.value()),
            "penalty": self.penalty.currentText(),
            "device": self.device.currentText(),
            "crop": int(self.crop.value()) or None,
            "batch_size": int(self.batch_size.value()),
            "augment": bool(self.augment.isChecked()),
            "preview_every": int(self.preview_every.value()),
            "preview_interval_s": float(self.preview_interval.value()),
            "compile": bool(self.compile.isChecked()),
            "compile_ahead": True,  # compile in a child process: the window stays responsive
            "keep_connected": bool(self.keep_connected.isChecked()),
            "tta": self.tta_mode(),
        }

    def tta_mode(self) -> str:
        """The test-time views chosen (one of ``TTA_MODES``)."""
        return str(self.tta.currentData())

    def set_tta_mode(self, mode: str) -> None:
        """Choose the test-time views ``mode`` (one of ``TTA_MODES``)."""
        index = self.tta.findData(mode)
        if index < 0:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
        self.tta.setCurrentIndex(index)

    def _on_toggled(self, expanded: bool) -> None:
        if expanded:
            self.ensure_loaded()

    def _budget_kind_changed(self, kind: str) -> None:
        self.steps.setVisible(kind == "steps")
        self.minutes.setVisible(kind == "minutes")
