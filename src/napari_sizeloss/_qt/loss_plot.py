"""A live plot of the two loss terms: partial cross-entropy and the weighted size penalty.

Points are appended per training step; the canvas redraws at most every
``REDRAW_MS`` so that plotting never slows training down. Rounds (Train,
Use corrections) are separated by dashed vertical lines; the step axis counts
steps over all rounds.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

REDRAW_MS = 300
#: Values are clipped to this floor on the log axis (a size term of exactly 0).
LOG_FLOOR = 1e-6
#: The y axis spans at most this ratio (zeros of the size term sit on the bottom edge).
MAX_DECADES = 1e4


class LossPlot(QWidget):
    """Cross-entropy and size-penalty curves against the step number."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.9), dpi=90, layout="constrained")
        self.figure.patch.set_alpha(0.0)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(160)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self._style_axes()
        (self.ce_line,) = self.axes.plot([], [], color="#ff9f1c", lw=1.2, label="cross-entropy")
        (self.size_line,) = self.axes.plot([], [], color="#2ec4b6", lw=1.2, label="size penalty")
        self.axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7, frameon=False, labelcolor="#dddddd")
        self.steps: list[int] = []
        self.ce: list[float] = []
        self.size: list[float] = []
        self.round_starts: list[int] = []
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    def _style_axes(self) -> None:
        ax = self.axes
        ax.set_facecolor("none")
        ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=7, color="#dddddd")
        ax.set_ylabel("loss term", fontsize=7, color="#dddddd")
        ax.tick_params(labelsize=7, colors="#dddddd")
        for spine in ax.spines.values():
            spine.set_color("#888888")

    @property
    def total_steps(self) -> int:
        return self.steps[-1] if self.steps else 0

    def start_round(self) -> None:
        """Mark the start of a new training round (continues the step axis)."""
        if self.steps:
            self.round_starts.append(self.total_steps)
            self.axes.axvline(self.total_steps, color="#888888", lw=0.8, ls="--")
            self._dirty = True

    def append(self, ce: float, size: float) -> None:
        """Add one step's terms (as minimised: the size term already weighted)."""
        self.steps.append(self.total_steps + 1)
        self.ce.append(float(ce))
        self.size.append(float(size))
        self._dirty = True

    def clear(self) -> None:
        self.steps.clear()
        self.ce.clear()
        self.size.clear()
        self.round_starts.clear()
        self.axes.cla()
        self._style_axes()
        (self.ce_line,) = self.axes.plot([], [], color="#ff9f1c", lw=1.2, label="cross-entropy")
        (self.size_line,) = self.axes.plot([], [], color="#2ec4b6", lw=1.2, label="size penalty")
        self.axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7, frameon=False, labelcolor="#dddddd")
        self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.isVisible():
            self._redraw()

    def _redraw(self) -> None:
        self._dirty = False
        x = np.asarray(self.steps)
        self.ce_line.set_data(x, np.maximum(self.ce, LOG_FLOOR))
        self.size_line.set_data(x, np.maximum(self.size, LOG_FLOOR))
        if len(x):
            values = np.concatenate([self.ce, self.size])
            top = max(float(values.max()), LOG_FLOOR) * 1.5
            positive = values[values > 0]
            low = float(positive.min()) / 1.5 if positive.size else LOG_FLOOR
            self.axes.set_xlim(0, max(2, x[-1]))
            self.axes.set_ylim(max(low, top / MAX_DECADES), top)
        self.canvas.draw_idle()

    def redraw_now(self) -> None:
        """Redraw at once, visible or not (tests, screenshots)."""
        self._redraw()
        self.canvas.draw()
