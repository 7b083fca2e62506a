"""The "Size bounds" panel: lower/upper slice-area sliders with spin boxes.

Bounds are slice areas in mm^2 when the image's spacing is known, pixels
otherwise. Sliders map their position ``p`` in ``[0, 1000]`` to
``max_area * (p / 1000)^2``, so small areas (a target is a few percent of a
slice) get a fine resolution; the spin boxes take any exact value.
"""

from __future__ import annotations

import math

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QWidget,
)

SLIDER_STEPS = 1000
UNIT_TEXT = {"mm2": "mm²", "px": "px"}

#: Default bounds as fractions of a whole slice's area.
DEFAULT_FRACTIONS = (0.005, 0.08)

OK_COLOR = "#4caf50"
BAD_COLOR = "#f44336"
NEUTRAL_COLOR = "#9e9e9e"


class _BoundRow(QWidget):
    """One slider + spin box pair, kept in sync."""

    value_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.max_area = 1.0
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.spin = QDoubleSpinBox()
        self.spin.setKeyboardTracking(False)
        self.spin.setMinimumWidth(90)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, stretch=1)
        layout.addWidget(self.spin)
        self.slider.valueChanged.connect(self._from_slider)
        self.spin.valueChanged.connect(self._from_spin)

    def set_range(self, max_area: float, suffix: str, decimals: int) -> None:
        self.max_area = max(float(max_area), 1e-9)
        for widget in (self.slider, self.spin):
            widget.blockSignals(True)
        self.spin.setDecimals(decimals)
        self.spin.setRange(0.0, self.max_area)
        self.spin.setSingleStep(10 ** (-decimals) if decimals else 1.0)
        self.spin.setSuffix(f" {suffix}")
        for widget in (self.slider, self.spin):
            widget.blockSignals(False)

    def value(self) -> float:
        return float(self.spin.value())

    def set_value(self, value: float) -> None:
        self.spin.setValue(float(value))  # emits through _from_spin when it changes

    def position_of(self, value: float) -> int:
        return int(round(SLIDER_STEPS * math.sqrt(max(0.0, min(value, self.max_area)) / self.max_area)))

    def value_at(self, position: int) -> float:
        return self.max_area * (position / SLIDER_STEPS) ** 2

    def _from_slider(self, position: int) -> None:
        value = self.value_at(position)
        self.spin.blockSignals(True)
        self.spin.setValue(value)
        self.spin.blockSignals(False)
        self.value_changed.emit(self.value())

    def _from_spin(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(self.position_of(value))
        self.slider.blockSignals(False)
        self.value_changed.emit(float(value))


class BoundsPanel(QGroupBox):
    """Lower/upper bound controls, the current slice's area, and the estimate-from-labels row.

    Signals
    -------
    bounds_changed(float, float)
        ``(lower, upper)`` in :attr:`unit`.
    estimate_requested(str, int)
        Name of the labels layer and the label value to estimate from.
    """

    bounds_changed = Signal(float, float)
    estimate_requested = Signal(str, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Size bounds (target area per slice)", parent)
        self.unit = "px"
        self.lower_row = _BoundRow()
        self.upper_row = _BoundRow()
        self.lower_slider, self.lower_spin = self.lower_row.slider, self.lower_row.spin
        self.upper_slider, self.upper_spin = self.upper_row.slider, self.upper_row.spin
        self.lower_row.setToolTip("Smallest area the target can have on a slice with target dots")
        self.upper_row.setToolTip("Largest area the target can have on any slice")
        self.lower_row.value_changed.connect(self._changed)
        self.upper_row.value_changed.connect(self._changed)

        self.warning = QLabel("")
        self.warning.setStyleSheet(f"color: {BAD_COLOR};")
        self.warning.setWordWrap(True)
        self.warning.hide()
        self.current = QLabel("this slice: no prediction yet")
        self.current.setWordWrap(True)

        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("A labels layer with a full annotation of one subject")
        self.label_value = QSpinBox()
        self.label_value.setRange(1, 65535)
        self.label_value.setValue(1)
        self.label_value.setToolTip("The label value of the target in that layer")
        self.estimate_button = QPushButton("Estimate from labels layer")
        self.estimate_button.setToolTip(
            "The paper's recipe: lower = 1.1 x the smallest non-empty slice area, upper = 0.9 x the largest"
        )
        self.estimate_button.clicked.connect(
            lambda: self.estimate_requested.emit(self.labels_combo.currentText(), self.label_value.value())
        )
        estimate = QHBoxLayout()
        estimate.addWidget(self.labels_combo, stretch=1)
        estimate.addWidget(QLabel("label"))
        estimate.addWidget(self.label_value)

        form = QFormLayout(self)
        form.addRow("Lower", self.lower_row)
        form.addRow("Upper", self.upper_row)
        form.addRow(self.warning)
        form.addRow(self.current)
        form.addRow("From", estimate)
        form.addRow(self.estimate_button)

    # ----------------------------------------------------------------- API
    def configure(self, max_area: float, unit: str) -> None:
        """Set the unit (``"mm2"`` or ``"px"``) and the largest area (a whole slice), and default bounds."""
        self.unit = unit
        decimals = 1 if unit == "mm2" else 0
        for row in (self.lower_row, self.upper_row):
            row.set_range(max_area, UNIT_TEXT[unit], decimals)
        self.set_bounds(max_area * DEFAULT_FRACTIONS[0], max_area * DEFAULT_FRACTIONS[1])

    def bounds(self) -> tuple[float, float]:
        """``(lower, upper)`` in :attr:`unit`."""
        return self.lower_row.value(), self.upper_row.value()

    def set_bounds(self, lower: float, upper: float) -> None:
        """Set both bounds (clipped to the slider range); emits :attr:`bounds_changed` once."""
        for row, value in ((self.lower_row, lower), (self.upper_row, upper)):
            row.blockSignals(True)
            row.set_value(value)
            row._from_spin(row.value())  # sync the slider without emitting twice
            row.blockSignals(False)
        self._changed()

    def problem(self) -> str | None:
        """A one-line description of what is wrong with the bounds, or None."""
        lower, upper = self.bounds()
        unit = UNIT_TEXT[self.unit]
        if lower > upper:
            return f"lower bound {lower:.1f} {unit} is above the upper bound {upper:.1f} {unit}"
        if upper <= 0:
            return "the upper bound must be above 0"
        return None

    def set_labels_layers(self, names: list[str], current: str | None = None) -> None:
        keep = current if current is not None else self.labels_combo.currentText()
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        self.labels_combo.addItems(names)
        if keep in names:
            self.labels_combo.setCurrentText(keep)
        self.labels_combo.blockSignals(False)
        self.estimate_button.setEnabled(bool(names))

    def show_current(self, z: int, t: int, area: float | None, lower: float | None, upper: float | None) -> None:
        """Show the predicted area of slice ``z``, frame ``t`` against the bounds in force there.

        ``area`` None: no prediction yet. ``lower``/``upper`` are in :attr:`unit`.
        """
        unit = UNIT_TEXT[self.unit]
        where = f"slice z={z}, t={t}"
        if area is None:
            self.current.setText(f"{where}: no prediction yet")
            self.current.setStyleSheet(f"color: {NEUTRAL_COLOR};")
            return
        lo = 0.0 if lower is None else lower
        hi = math.inf if upper is None else upper
        inside = lo - 1e-6 <= area <= hi + 1e-6
        verdict = "inside" if inside else ("below" if area < lo else "above")
        shown_hi = "inf" if hi == math.inf else f"{hi:.0f}"
        self.current.setText(f"{where}: predicted {area:.0f} {unit}, {verdict} [{lo:.0f}, {shown_hi}]")
        self.current.setStyleSheet(f"color: {OK_COLOR if inside else BAD_COLOR};")

    def _changed(self, *_) -> None:
        problem = self.problem()
        self.warning.setText(problem or "")
        self.warning.setVisible(problem is not None)
        self.bounds_changed.emit(*self.bounds())
