"""The "Dots" panel: which layer holds the dots, and whether a click adds target or background."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from .layers import BACKGROUND, BACKGROUND_COLOR, TARGET, TARGET_COLOR


class SeedsPanel(QGroupBox):
    """Seeds layer picker, target/background toggle and a summary of the dots.

    Signals
    -------
    kind_changed(str)
        ``"target"`` or ``"background"``: what the next click adds.
    layer_changed(str)
        Name of the chosen seeds layer ("" for none).
    """

    kind_changed = Signal(str)
    layer_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Dots", parent)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(
            "Layer holding the dots: the Points layer made for the image (one click = one dot), "
            "or a Labels layer of the image's shape with 1 = target, 2 = background"
        )
        self.layer_combo.currentTextChanged.connect(self.layer_changed)

        self.target_button = QPushButton("Target (T)")
        self.background_button = QPushButton("Background (B)")
        for button, kind, color in (
            (self.target_button, TARGET, TARGET_COLOR),
            (self.background_button, BACKGROUND, BACKGROUND_COLOR),
        ):
            button.setCheckable(True)
            button.setProperty("kind", kind)
            button.setStyleSheet(f"QPushButton:checked {{ border: 2px solid {color}; font-weight: bold; }}")
        self.target_button.setToolTip("Clicks add dots inside the structure to segment (key T on the seeds layer)")
        self.background_button.setToolTip("Clicks add dots outside it, where the prediction is wrong (key B)")
        self.kind_group = QButtonGroup(self)
        self.kind_group.setExclusive(True)
        self.kind_group.addButton(self.target_button)
        self.kind_group.addButton(self.background_button)
        self.target_button.setChecked(True)
        self.kind_group.buttonToggled.connect(self._on_toggled)

        self.summary = QLabel("no dots yet: click inside the target on a few slices")
        self.summary.setWordWrap(True)

        kinds = QHBoxLayout()
        kinds.addWidget(self.target_button)
        kinds.addWidget(self.background_button)
        form = QFormLayout(self)
        form.addRow("Seeds layer", self.layer_combo)
        form.addRow("Click adds", kinds)
        form.addRow(self.summary)

    # ----------------------------------------------------------------- API
    @property
    def kind(self) -> str:
        """What the next click adds: ``"target"`` or ``"background"``."""
        return BACKGROUND if self.background_button.isChecked() else TARGET

    def set_kind(self, kind: str) -> None:
        """Select ``"target"`` or ``"background"`` (emits :attr:`kind_changed` when it changes)."""
        (self.background_button if kind == BACKGROUND else self.target_button).setChecked(True)

    def set_layers(self, names: list[str], current: str | None) -> None:
        """Refill the layer list, keeping ``current`` selected when present (no signal)."""
        self.layer_combo.blockSignals(True)
        try:
            self.layer_combo.clear()
            self.layer_combo.addItems(names)
            if current in names:
                self.layer_combo.setCurrentText(current)
        finally:
            self.layer_combo.blockSignals(False)

    @property
    def layer_name(self) -> str:
        return self.layer_combo.currentText()

    def set_summary(self, n_target: int, n_background: int, n_slices: int, n_outside: int = 0) -> None:
        """Show how many dots there are and on how many slices."""
        if n_target + n_background == 0:
            text = "no dots yet: click inside the target on a few slices"
        else:
            text = f"{n_target} target dot(s) on {n_slices} slice(s), {n_background} background dot(s)"
        if n_outside:
            text += f"; {n_outside} outside the image (ignored)"
        self.summary.setText(text)

    def _on_toggled(self, button, checked: bool) -> None:
        if checked:
            self.kind_changed.emit(button.property("kind"))
