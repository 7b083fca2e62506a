"""A live plot of the two loss terms: partial cross-entropy and the weighted size penalty.

Points are appended per training step; the widget repaints at most every
``REDRAW_MS`` (each repaint recomposites napari's OpenGL window, which is
not free on a small machine). It is drawn with QPainter, not matplotlib: a matplotlib redraw
(layout, tick formatting, Agg rasterising) took 100-250 ms of the GUI thread
on 2 busy cores and froze the window during training
(``xvfb-run -a python scripts/gui_bench.py``); this one paints in about a
millisecond. Rounds (Train, Use corrections) are separated by dashed vertical
lines; the step axis counts steps over all rounds; the y axis is logarithmic.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

REDRAW_MS = 1000
#: Values are clipped to this floor on the log axis (a size term of exactly 0).
LOG_FLOOR = 1e-6
#: The y axis spans at most this ratio (zeros of the size term sit on the bottom edge).
MAX_DECADES = 1e4
#: Curves are drawn through at most this many points (min/max kept per bucket).
MAX_POINTS = 600

CE_COLOUR = "#ff9f1c"
SIZE_COLOUR = "#2ec4b6"
TEXT_COLOUR = "#dddddd"
AXIS_COLOUR = "#888888"


def y_limits(ce, size) -> tuple[float, float]:
    """Log-axis limits ``(low, top)`` that show both curves (at most ``MAX_DECADES``)."""
    values = np.concatenate([np.asarray(ce, float), np.asarray(size, float)])
    values = values[np.isfinite(values)]
    if not values.size:
        return LOG_FLOOR, 1.0
    top = max(float(values.max()), LOG_FLOOR) * 1.5
    positive = values[values > 0]
    low = float(positive.min()) / 1.5 if positive.size else LOG_FLOOR
    return max(low, top / MAX_DECADES), top


def decimate(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points, keeping each bucket's min and max (spikes stay visible)."""
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(int)
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        seg = y[a:b]
        i, j = a + int(np.argmin(seg)), a + int(np.argmax(seg))
        for k in sorted((i, j)):
            xs.append(x[k])
            ys.append(y[k])
    return np.asarray(xs), np.asarray(ys)


class LossPlot(QWidget):
    """Cross-entropy and size-penalty curves against the step number."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(160)
        self.setMinimumWidth(200)
        self.steps: list[int] = []
        self.ce: list[float] = []
        self.size: list[float] = []
        self.round_starts: list[int] = []
        self.paint_count = 0
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()

    @property
    def total_steps(self) -> int:
        return self.steps[-1] if self.steps else 0

    def start_round(self) -> None:
        """Mark the start of a new training round (continues the step axis)."""
        if self.steps:
            self.round_starts.append(self.total_steps)
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
        self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.isVisible():
            self._dirty = False
            self.update()

    def redraw_now(self) -> None:
        """Repaint at once (tests, screenshots)."""
        self._dirty = False
        self.repaint()

    # ------------------------------------------------------------ painting
    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.paint_count += 1
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        text_h = metrics.height()
        left, right, top, bottom = metrics.horizontalAdvance("1e-00") + 8, 8, text_h + 6, text_h + 8
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))

        text_pen = QPen(QColor(TEXT_COLOUR))
        axis_pen = QPen(QColor(AXIS_COLOUR))
        # legend above the plot
        x = plot.left()
        for label, colour in (("cross-entropy", CE_COLOUR), ("size penalty", SIZE_COLOUR)):
            painter.setPen(QPen(QColor(colour), 2))
            painter.drawLine(QPointF(x, top / 2), QPointF(x + 14, top / 2))
            painter.setPen(text_pen)
            painter.drawText(QPointF(x + 18, top / 2 + metrics.ascent() / 2 - 1), label)
            x += 18 + metrics.horizontalAdvance(label) + 14
        painter.setPen(axis_pen)
        painter.drawRect(plot)

        n_max = max(2, self.total_steps)
        low, high = y_limits(self.ce, self.size)
        log_low, log_high = math.log10(low), math.log10(high)
        span = max(log_high - log_low, 1e-9)

        def to_x(step: float) -> float:
            return plot.left() + plot.width() * step / n_max

        def to_y(value: float) -> float:
            v = math.log10(min(max(value, low), high))
            return plot.bottom() - plot.height() * (v - log_low) / span

        # y ticks at whole decades
        painter.setPen(text_pen)
        for decade in range(math.ceil(log_low), math.floor(log_high) + 1):
            y = to_y(10.0**decade)
            painter.setPen(axis_pen)
            painter.drawLine(QPointF(plot.left() - 3, y), QPointF(plot.left(), y))
            painter.setPen(text_pen)
            painter.drawText(QRectF(0, y - text_h / 2, plot.left() - 5, text_h),
                             int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), f"1e{decade}")
        # x ticks: 0, middle, end
        for step in (0, n_max // 2, n_max):
            x = to_x(step)
            painter.setPen(axis_pen)
            painter.drawLine(QPointF(x, plot.bottom()), QPointF(x, plot.bottom() + 3))
            painter.setPen(text_pen)
            painter.drawText(QRectF(x - 30, plot.bottom() + 3, 60, text_h), int(Qt.AlignmentFlag.AlignHCenter), str(step))
        # the axis name sits under the y tick labels, clear of the step numbers
        painter.drawText(QRectF(0, plot.bottom() + 3, plot.left() - 8, text_h),
                         int(Qt.AlignmentFlag.AlignRight), "step")

        dashed = QPen(QColor(AXIS_COLOUR), 1, Qt.PenStyle.DashLine)
        painter.setPen(dashed)
        for start in self.round_starts:
            x = to_x(start)
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))

        if not self.steps:
            return
        painter.setClipRect(plot)
        steps = np.asarray(self.steps, dtype=float)
        for values, colour in ((self.ce, CE_COLOUR), (self.size, SIZE_COLOUR)):
            xs, ys = decimate(steps, np.maximum(np.asarray(values, dtype=float), LOG_FLOOR))
            path = QPainterPath()
            for i, (sx, sy) in enumerate(zip(xs, ys)):
                point = QPointF(to_x(sx), to_y(sy))
                if i == 0:
                    path.moveTo(point)
                else:
                    path.lineTo(point)
            painter.setPen(QPen(QColor(colour), 1.2))
            painter.drawPath(path)
