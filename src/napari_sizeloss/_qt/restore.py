"""Autosave and restore of the user's work, widget side (storage: :mod:`.autosave`).

Mixed into :class:`~napari_sizeloss._qt.widget.SizeLossWidget`: dots, tags,
corrections and bounds are written a second after each change, on the
background writer (:class:`.autosave.AutosaveWriter`) so a slow disk never
holds up the window; when the widget is hidden or closed it waits for the
write. Saved work is offered back, in a banner, when the same image is chosen
again.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np

from . import autosave
from .layers import BACKGROUND, TARGET, dot_kinds


class AutosaveMixin:
    """Autosave, the "Saved work found" offer, and restore."""

    # ============================================================ autosave
    def _schedule_autosave(self) -> None:
        if not self._closed and self.geometry is not None:
            self._autosave_timer.start()

    def _saved_work(self) -> autosave.SavedWork:
        from napari.layers import Points

        points = np.zeros((0, self.geometry.layer_ndim))
        kinds: list[str] = []
        if isinstance(self.seeds_layer, Points):
            points = np.array(self.seeds_layer.data, dtype=float)  # a copy: the writer thread reads it later
            kinds = dot_kinds(self.seeds_layer)
        else:  # dots are not in a Points layer now (removed, or a labels seeds layer): keep the saved ones
            previous = autosave.load_work(self.autosave_path())
            if previous is not None and previous.fingerprint == self._fingerprint:
                points, kinds = previous.points, previous.kinds
        sup = self.supervision
        lower, upper = self.bounds_panel.bounds()
        return autosave.SavedWork(
            fingerprint=self._fingerprint or "",
            points=points,
            kinds=kinds,
            absent=sup.absent.copy(),
            corrected=sup.corrected.copy(),
            corrections=sup.packed_corrections(),
            bounds=(lower, upper, self.bounds_panel.unit),
        )

    def autosave_path(self) -> Path | None:
        """Where the work on the current image is autosaved (None without an image)."""
        if self.geometry is None or self._fingerprint is None:
            return None
        return autosave.autosave_path(self.geometry.source_path, self.geometry.name, self._fingerprint)

    def _submit_autosave(self) -> Future | None:
        """Snapshot the work and hand it to the background writer (None when there is nothing to save)."""
        self._autosave_timer.stop()
        if self.geometry is None or self.supervision is None:
            return None
        work = self._saved_work()
        if work.is_empty:
            return None  # never replace saved work with nothing
        path = self.autosave_path()
        if self._pending_work is not None and not self._backed_up:
            # new work while the offer is still open: keep the offered file aside
            # (after any write in progress, which could otherwise land on it afterwards)
            self._autosave_writer.flush()
            offered = self._pending_work[0]
            if offered.exists():
                offered.replace(offered.with_name(offered.name.replace(".npz", ".previous.npz")))
            self._backed_up = True
        fallback = autosave.user_autosave_path(self.geometry.source_path, self.geometry.name, self._fingerprint)
        return self._autosave_writer.submit(path, work, fallback)

    def autosave_now(self) -> Path | None:
        """Write dots, tags, corrections and bounds and wait for the write (and any before it).

        Returns the file, or None when there is nothing to save or the write
        failed (the status line says why).
        """
        future = self._submit_autosave()
        if future is None:
            return None
        try:
            return future.result()
        except OSError as exc:
            self._report_autosave_failure(str(exc))
            return None

    def autosave_in_background(self) -> Future | None:
        """Hand dots, tags, corrections and bounds to the background writer and return at once.

        What the autosave timer runs. A failure reaches the status line
        through :attr:`autosave_failed`. Returns the write's future (None when
        there is nothing to save).
        """
        future = self._submit_autosave()
        if future is not None:
            future.add_done_callback(self._background_autosave_done)
        return future

    def _background_autosave_done(self, future: Future) -> None:
        # runs on the writer thread: only a queued signal may reach the widget
        exc = future.exception()
        if exc is None or self._closed:
            return
        try:
            self.autosave_failed.emit(str(exc))
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def _report_autosave_failure(self, reason: str) -> None:
        if not self._closed:
            text = f"autosave failed ({reason}); your dots are still in the seeds layer"
            self._message(text, "warning", notify=False)

    def _offer_saved_work(self) -> None:
        found = autosave.find_saved_work(self.geometry.source_path, self.geometry.name, self._fingerprint)
        if found is None:
            return
        self._pending_work = found
        self._backed_up = False
        self.restore_text.setText(f"Saved work for {self.geometry.name!r}: {found[1].summary()}.")
        self.restore_box.show()

    def _ignore_saved_work(self) -> None:
        self._pending_work = None
        self.restore_box.hide()

    def restore_saved_work(self) -> bool:
        """Put the offered saved dots, tags, corrections and bounds back."""
        from napari.layers import Points

        if self._pending_work is None or self.geometry is None:
            return False
        path, work = self._pending_work
        if not work.fits(self.geometry.shape, self.geometry.layer_ndim):
            self._message(f"saved work in {path} does not fit this image; ignored", "warning")
            self._ignore_saved_work()
            return False
        self._pending_work = None
        self.restore_box.hide()
        if isinstance(self.seeds_layer, Points) and len(work.points):
            import pandas as pd

            layer = self.seeds_layer
            layer.data = work.points
            layer.features = pd.DataFrame({"kind": pd.Categorical(work.kinds, categories=[TARGET, BACKGROUND])})
            layer.refresh_colors() if hasattr(layer, "refresh_colors") else None
            layer.feature_defaults["kind"] = self.seeds_panel.kind
        self.supervision.absent[:] = work.absent
        self.supervision.corrected[:] = work.corrected
        self.supervision.corrections[:] = work.corrections_volume()
        if work.corrected.any():
            self._ensure_prediction_layer()
            self.tracker.show_corrections(self.supervision.corrections, self.supervision.corrected)
        if work.bounds is not None and work.bounds[2] == self.bounds_panel.unit:
            self.bounds_panel.set_bounds(work.bounds[0], work.bounds[1])
        self._present = None
        self._refresh_views()
        self._message(f"restored saved work from {path}", "success", notify=False)
        return True

