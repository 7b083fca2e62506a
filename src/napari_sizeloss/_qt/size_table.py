"""Predicted size per slice and frame against the bounds, as a colour-coded table.

Rows are slices ``z``, columns frames ``t``. Each cell shows the predicted
target area (mm^2 or px) and is coloured by :func:`classify_slices`: green
inside the bounds that apply to that slice, red where a constraint is
violated, amber where an untagged slice has a small prediction (is the target
there? add a dot or tag it absent), grey when there is no prediction yet.
Marks: ``•`` slice with target dots, ``∅`` tagged absent, ``✎`` corrected.
Clicking a cell shows that slice in the viewer. Cells can be selected
(drag, shift- or ctrl-click) and tagged target-absent, or untagged, in one
go: the apical slices of every frame where the cavity has closed, say.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

NONE, OK, VIOLATION, CHECK, CORRECTED = 0, 1, 2, 3, 4
COLORS = {
    NONE: QColor(90, 90, 90, 120),
    OK: QColor(76, 175, 80, 150),
    VIOLATION: QColor(244, 67, 54, 190),
    CHECK: QColor(255, 179, 0, 170),
    CORRECTED: QColor(120, 144, 156, 170),
}
STATE_TEXT = {NONE: "no prediction", OK: "inside the bounds", VIOLATION: "violates the bounds",
              CHECK: "small prediction on an untagged slice", CORRECTED: "corrected by hand"}


def slice_bounds_in_force(
    lower: float, upper: float, present: np.ndarray, absent: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice ``(lower, upper)`` ``(Z, T)`` as the trainer applies them.

    Present slices (target dots) ``[lower, upper]``, absent ``[0, 0]``, others
    ``[0, upper]``.
    """
    lo = np.where(present, lower, 0.0).astype(float)
    hi = np.full(present.shape, float(upper))
    lo[absent] = 0.0
    hi[absent] = 0.0
    return lo, hi


def classify_slices(
    sizes: np.ndarray | None,
    lower: np.ndarray,
    upper: np.ndarray,
    present: np.ndarray,
    absent: np.ndarray,
    corrected: np.ndarray,
    tolerance: float = 0.5,
) -> np.ndarray:
    """State of each slice: ``NONE``, ``OK``, ``VIOLATION``, ``CHECK`` or ``CORRECTED``.

    Parameters
    ----------
    sizes : ndarray float (Z, T) or None
        Predicted areas (same unit as the bounds); None: no prediction yet.
    lower, upper : ndarray float (Z, T)
        Bounds in force (:func:`slice_bounds_in_force`).
    present, absent, corrected : ndarray bool (Z, T)
    tolerance : float
        Slack on the bounds (same unit) so that rounding is not a violation.

    Returns
    -------
    ndarray int (Z, T)
    """
    state = np.full(present.shape, NONE, dtype=int)
    if sizes is None:
        state[corrected] = CORRECTED
        return state
    sizes = np.asarray(sizes, dtype=float)
    outside = (sizes < lower - tolerance) | (sizes > upper + tolerance)
    state[:] = np.where(outside, VIOLATION, OK)
    untagged = ~present & ~absent
    global_lower = float(np.max(np.where(present, lower, 0.0))) if present.any() else 0.0
    small = untagged & (sizes > tolerance) & (sizes < global_lower - tolerance) & ~outside
    state[small] = CHECK
    state[corrected] = CORRECTED
    return state


def state_text(state: int, size: float, upper: float, absent: bool) -> str:
    """What a cell's state means and what the user can do about it (the cell's tooltip).

    A red cell can mean that the prediction is wrong *or* that the bound is:
    bounds from another subject's heart can sit below this one's basal
    slices (see :func:`~napari_sizeloss.bounds.widen_to_admit`).
    """
    if state != VIOLATION:
        return STATE_TEXT[state]
    if absent:
        return "predicted on a slice tagged absent: train on or erase it; unmark the tag if the target is there"
    if size > upper:  # a violation on a slice not tagged absent is above the upper bound or below the lower
        return ("larger than the upper bound: erase the excess, or raise the upper bound "
                "if the target really is this large here")
    return ("smaller than the lower bound: paint the missing part, or lower the bound "
            "if the target really is this small here")


class SizeTable(QWidget):
    """The colour-coded ``Z x T`` table.

    Signals
    -------
    slice_clicked(int, int)
        ``(z, t)`` of a clicked cell.
    tag_requested(object, bool)
        ``(cells, absent)``: ``cells`` bool ``(Z, T)``, the selected cells, to
        be tagged target-absent (``absent=True``) or untagged.
    """

    slice_clicked = Signal(int, int)
    tag_requested = Signal(object, bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.summary = QLabel("no prediction yet")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.horizontalHeader().setDefaultSectionSize(44)
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.setMinimumHeight(140)
        self.table.setMaximumHeight(200)
        font = self.table.font()
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        self.table.setFont(font)
        self.table.cellClicked.connect(lambda row, col: self.slice_clicked.emit(row, col))
        self.mark_button = QPushButton("Mark selected absent")
        self.mark_button.setToolTip("Tag the selected cells (slice z, frame t) target-absent: bounds [0, 0] there. "
                                    "Drag, shift- or ctrl-click in the table to select.")
        self.unmark_button = QPushButton("Unmark selected")
        self.mark_button.clicked.connect(lambda: self._request(True))
        self.unmark_button.clicked.connect(lambda: self._request(False))
        buttons = QHBoxLayout()
        buttons.addWidget(self.mark_button)
        buttons.addWidget(self.unmark_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self.states: np.ndarray | None = None

    def selected_cells(self) -> np.ndarray:
        """The selected cells as bool ``(Z, T)`` (rows z, columns t)."""
        cells = np.zeros((self.table.rowCount(), self.table.columnCount()), dtype=bool)
        for span in self.table.selectedRanges():
            cells[span.topRow():span.bottomRow() + 1, span.leftColumn():span.rightColumn() + 1] = True
        return cells

    def _request(self, absent: bool) -> None:
        cells = self.selected_cells()
        if cells.any():
            self.tag_requested.emit(cells, absent)

    def set_shape(self, n_slices: int, n_frames: int) -> None:
        """``n_slices`` rows (z) and ``n_frames`` columns (t), emptied."""
        self.table.clear()
        self.table.setRowCount(n_slices)
        self.table.setColumnCount(n_frames)
        self.table.setVerticalHeaderLabels([f"z{z}" for z in range(n_slices)])
        self.table.setHorizontalHeaderLabels([f"t{t}" for t in range(n_frames)])
        self.states = None
        self.summary.setText("no prediction yet")

    def show_sizes(
        self,
        sizes: np.ndarray | None,
        lower: np.ndarray,
        upper: np.ndarray,
        present: np.ndarray,
        absent: np.ndarray,
        corrected: np.ndarray,
        unit_text: str,
    ) -> np.ndarray:
        """Fill the table (all arrays ``(Z, T)``, sizes and bounds in ``unit_text``); returns the states."""
        Z, T = present.shape
        if self.table.rowCount() != Z or self.table.columnCount() != T:
            self.set_shape(Z, T)
        states = classify_slices(sizes, lower, upper, present, absent, corrected)
        for z in range(Z):
            for t in range(T):
                mark = "∅" if absent[z, t] else ("•" if present[z, t] else "")
                if corrected[z, t]:
                    mark += "✎"
                value = "" if sizes is None else f"{sizes[z, t]:.0f}"
                item = self.table.item(z, t)
                if item is None:
                    item = QTableWidgetItem()
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                    self.table.setItem(z, t, item)
                item.setText(f"{value}{mark}")
                item.setBackground(QBrush(COLORS[int(states[z, t])]))
                hi = "inf" if not np.isfinite(upper[z, t]) else f"{upper[z, t]:.0f}"
                size_text = "no prediction" if sizes is None else f"{sizes[z, t]:.0f} {unit_text}"
                item.setToolTip(
                    f"z={z}, t={t}: {size_text}; bounds [{lower[z, t]:.0f}, {hi}] {unit_text}; "
                    + state_text(int(states[z, t]), 0.0 if sizes is None else float(sizes[z, t]),
                                 float(upper[z, t]), bool(absent[z, t]))
                )
        self.states = states
        if sizes is None:
            self.summary.setText("no prediction yet")
        else:
            n_bad = int((states == VIOLATION).sum())
            n_check = int((states == CHECK).sum())
            self.summary.setText(
                f"{n_bad} of {Z * T} slice-frames violate the bounds (red); {n_check} to check (amber). "
                "Click a cell to go there; select cells to tag them absent."
            )
        return states
