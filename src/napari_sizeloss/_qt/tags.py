"""The "Slice tags" panel: mark slices where the target is absent.

A slice with target dots is *present* (bounds ``[lower, upper]``); a slice
tagged *absent* gets ``[0, 0]`` (the network is pushed to predict nothing
there); every other slice gets ``[0, upper]``.
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)


class TagsPanel(QGroupBox):
    """Buttons that tag the current slice, or a range of slices, as target-absent.

    Signals
    -------
    tag_requested(int, int, bool, bool)
        ``(z_first, z_last, all_frames, absent)``: tag slices ``z_first..z_last``
        (inclusive) of the current frame, or of every frame when
        ``all_frames``, as absent (``absent=True``) or clear their tag.
    clear_requested()
        Remove every absent tag.
    """

    tag_requested = Signal(int, int, bool, bool)
    clear_requested = Signal()
    current_requested = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Slice tags", parent)
        self.all_frames = QCheckBox("all frames")
        self.all_frames.setChecked(True)
        self.all_frames.setToolTip("Tag the slice in every frame (unchecked: only the frame shown)")
        self.mark_button = QPushButton("Mark slice absent")
        self.mark_button.setToolTip("The target is not on the slice shown (e.g. above the base or below the apex)")
        self.unmark_button = QPushButton("Unmark")
        self.mark_button.clicked.connect(lambda: self.current_requested.emit(True))
        self.unmark_button.clicked.connect(lambda: self.current_requested.emit(False))

        self.range_first = QSpinBox()
        self.range_last = QSpinBox()
        self.range_button = QPushButton("Mark range")
        self.range_button.setToolTip("Tag slices z first..last as target-absent (all frames or this one)")
        self.range_button.clicked.connect(self._range)
        self.clear_button = QPushButton("Clear tags")
        self.clear_button.clicked.connect(self.clear_requested)
        self.summary = QLabel("present: slices with target dots; absent: none")
        self.summary.setWordWrap(True)

        current = QHBoxLayout()
        current.addWidget(self.mark_button)
        current.addWidget(self.unmark_button)
        current.addWidget(self.all_frames)
        span = QHBoxLayout()
        span.addWidget(QLabel("z"))
        span.addWidget(self.range_first)
        span.addWidget(QLabel("to"))
        span.addWidget(self.range_last)
        span.addWidget(self.range_button, stretch=1)
        form = QFormLayout(self)
        form.addRow(current)
        form.addRow(span)
        form.addRow(self.clear_button)
        form.addRow(self.summary)

    def set_depth(self, n_slices: int) -> None:
        """Allow ``z`` in ``0 .. n_slices - 1`` in the range boxes."""
        for box in (self.range_first, self.range_last):
            box.setRange(0, max(0, n_slices - 1))
        self.range_last.setValue(max(0, n_slices - 1))

    def set_summary(self, n_present: int, n_absent: int, n_total: int) -> None:
        self.summary.setText(
            f"present (dots): {n_present} slice(s); absent: {n_absent}; of {n_total} slice-frames"
        )

    def _range(self) -> None:
        first, last = sorted((self.range_first.value(), self.range_last.value()))
        self.tag_requested.emit(first, last, self.all_frames.isChecked(), True)
