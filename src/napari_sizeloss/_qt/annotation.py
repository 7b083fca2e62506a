"""Dots, bounds and slice tags: the widget's annotation side.

Mixed into :class:`~napari_sizeloss._qt.widget.SizeLossWidget`. The seeds
layer is followed through its events (a click adds a dot; T / B on the layer
switch between target and background dots); bounds can be estimated from a
labels layer with the paper's recipe; slices are tagged target-absent from the
current slice or a range.
"""

from __future__ import annotations

import numpy as np

from .bounds_panel import UNIT_TEXT
from .layers import BACKGROUND, TARGET, current_zt, dot_kinds, points_summary, seeds_from_layer


class AnnotationMixin:
    """Seeds layer events, the seeds array, bound estimation and slice tags."""

    # ============================================================== seeds
    def _watch_seeds(self, layer) -> None:
        """Follow ``layer`` as the seeds layer (None: no seeds layer)."""
        from napari.layers import Points

        old = self.seeds_layer
        if old is not None:
            try:
                old.events.data.disconnect(self._on_seeds_changed)
                if hasattr(old.events, "paint"):
                    old.events.paint.disconnect(self._on_seeds_changed)
            except (RuntimeError, TypeError, ValueError):
                pass
        self.seeds_layer = layer
        self._present = None
        if layer is None:
            return
        layer.events.data.connect(self._on_seeds_changed)
        if hasattr(layer.events, "paint"):
            layer.events.paint.connect(self._on_seeds_changed)
        if isinstance(layer, Points):
            layer.feature_defaults["kind"] = self.seeds_panel.kind
            layer.bind_key("t", self._key_target, overwrite=True)
            layer.bind_key("b", self._key_background, overwrite=True)
        self._on_seeds_changed()

    def _key_target(self, layer=None) -> None:
        self.seeds_panel.set_kind(TARGET)

    def _key_background(self, layer=None) -> None:
        self.seeds_panel.set_kind(BACKGROUND)

    def _on_kind_changed(self, kind: str) -> None:
        from napari.layers import Points

        if isinstance(self.seeds_layer, Points):
            self.seeds_layer.feature_defaults["kind"] = kind
        self._message(f"clicks now add {kind} dots", notify=False)

    def _on_seeds_layer_chosen(self, name: str) -> None:
        if not name or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        if layer is not self.seeds_layer:
            self._watch_seeds(layer)
            self._refresh_views()

    def _on_seeds_changed(self, event=None) -> None:
        self._present = None
        self._schedule_refresh()
        self._schedule_autosave()

    def present(self) -> np.ndarray:
        """bool ``(Z, T)``: slices with target dots (cached until the dots change)."""
        if self._present is None:
            self._present = self._count_dots()[2]
        return self._present

    def _count_dots(self) -> tuple[int, int, np.ndarray, int]:
        from napari.layers import Points

        Z, T = self.geometry.shape[2:]
        layer = self.seeds_layer
        if layer is None:
            return 0, 0, np.zeros((Z, T), dtype=bool), 0
        if isinstance(layer, Points):
            return points_summary(np.asarray(layer.data), dot_kinds(layer), self.geometry)
        data = np.asarray(layer.data)
        if data.shape != self.geometry.layer_shape:
            return 0, 0, np.zeros((Z, T), dtype=bool), 0
        seeds = self.geometry.to_core(data)
        present = (seeds == 1).any(axis=(0, 1))
        return int((seeds == 1).sum()), int((seeds == 2).sum()), present, 0

    def seeds_array(self) -> np.ndarray:
        """The seeds the trainer gets: uint8 ``(X, Y, Z, T)``, 0 none / 1 target / 2 background.

        Raises
        ------
        ValueError
            No seeds layer, a seeds labels layer of another shape, or no target dot.
        """
        if self.seeds_layer is None:
            raise ValueError("no seeds layer: choose the image again to make one")
        seeds, outside = seeds_from_layer(self.seeds_layer, self.geometry, self.settings.dot_radius.value())
        # Counted from the dots, not from the volume: a pass over a 16 MB volume (and its temporaries)
        # cost the Train press 40-60 ms on a 256x256x10x25 cine.
        n_target, _, self._present, _ = self._count_dots()
        if not n_target:
            raise ValueError(
                f"no target dots in {self.seeds_layer.name!r}: click inside the target on a few slices first"
            )
        if outside:
            self._message(f"{outside} dot(s) lie outside the image and are ignored", "warning", notify=False)
        return seeds

    # ============================================================= bounds
    def _on_bounds_changed(self, lower: float, upper: float) -> None:
        self._schedule_refresh()
        self._schedule_autosave()

    def _on_estimate_layer_chosen(self, name: str) -> None:
        if not name or name not in self.viewer.layers:
            return
        target = (self.viewer.layers[name].metadata or {}).get("target_label")
        if target is not None:
            self.bounds_panel.label_value.setValue(int(target))

    def estimate_bounds(self, layer_name: str | None = None, label: int | None = None) -> tuple[float, float] | None:
        """Set the bounds with the paper's recipe from a labels layer (one annotated subject).

        lower = 1.1 x the smallest non-empty slice area of ``label``, upper =
        0.9 x the largest, converted to the panel's unit with the labels
        layer's spacing (or the image's when the layer has none).
        """
        layer_name = layer_name or self.bounds_panel.labels_combo.currentText()
        label = int(label if label is not None else self.bounds_panel.label_value.value())
        if self.geometry is None:
            self._message("choose an image layer first", "error")
            return None
        if not layer_name or layer_name not in self.viewer.layers:
            self._message("choose a labels layer with an annotation to estimate the bounds from", "error")
            return None
        from ..bounds import bounds_from_annotation

        layer = self.viewer.layers[layer_name]
        data = np.asarray(layer.data)
        if data.ndim < 2 or data.ndim > 4:
            self._message(f"labels layer {layer_name!r} has {data.ndim} dimensions; 2 to 4 are supported", "error")
            return None
        labels_spacing = (layer.metadata or {}).get("spacing")
        try:
            estimate_px = bounds_from_annotation(data.T, label)  # (X, Y[, Z[, T]]) grid, pixels
        except ValueError as exc:
            self._message(f"cannot estimate bounds from {layer_name!r}: {exc}", "error")
            return None
        lower, upper = self._to_panel_unit(estimate_px.lower, estimate_px.upper, labels_spacing)
        self.bounds_panel.set_bounds(lower, upper)
        unit = UNIT_TEXT[self.bounds_panel.unit]
        self._message(f"bounds from {layer_name!r} label {label}: [{lower:.0f}, {upper:.0f}] {unit}", "success", notify=False)
        return lower, upper

    def _to_panel_unit(self, lower_px: float, upper_px: float, labels_spacing) -> tuple[float, float]:
        """Areas in pixels of a labels layer's grid -> the panel's unit on the image.

        With the labels layer's spacing known, the areas are physical (mm^2)
        and converted with the image's spacing; without it the labels are
        taken to share the image's grid.
        """
        if labels_spacing is None or len(labels_spacing) < 2:
            return float(self.geometry.to_area(lower_px)), float(self.geometry.to_area(upper_px))
        mm2_per_px = float(labels_spacing[0]) * float(labels_spacing[1])
        lower_mm2, upper_mm2 = lower_px * mm2_per_px, upper_px * mm2_per_px
        if self.bounds_panel.unit == "mm2":
            return lower_mm2, upper_mm2
        return lower_px, upper_px  # the image has no spacing: its pixels are the only unit

    # =============================================================== tags
    def current_slice(self) -> tuple[int, int]:
        """``(z, t)`` of the slice the viewer shows."""
        return current_zt(self.viewer, self.geometry, self.image_layer)

    def tag_current_slice(self, absent: bool = True) -> None:
        """Tag (or untag) the slice shown, in this frame or every frame (the "all frames" box)."""
        if self.geometry is None:
            self._message("choose an image layer first", "error")
            return
        z, t = self.current_slice()
        all_frames = self.tags_panel.all_frames.isChecked()
        self.tag_slices(z, z, all_frames, absent)

    def tag_slices(self, z_first: int, z_last: int, all_frames: bool, absent: bool = True) -> None:
        """Tag slices ``z_first..z_last`` as target-absent (``absent``) or clear their tag."""
        if self.supervision is None:
            self._message("choose an image layer first", "error")
            return
        t = None if all_frames else self.current_slice()[1]
        self._after_tagging(self.supervision.tag_absent(z_first, z_last, t, absent, self.present()))

    def tag_cells(self, cells, absent: bool = True) -> None:
        """Tag the slice-frames ``cells`` (bool ``(Z, T)``, e.g. the size table's selection) or clear their tag."""
        if self.supervision is None:
            self._message("choose an image layer first", "error")
            return
        try:
            skipped = self.supervision.tag_cells(cells, absent, self.present())
        except ValueError as err:  # a table of another image's shape: refuse, change nothing
            self._message(f"not tagged: {err}", "error")
            return
        self._after_tagging(skipped)

    def _after_tagging(self, skipped: list) -> None:
        if skipped:
            where = ", ".join(f"z={z} t={f}" for z, f in skipped[:4]) + (" ..." if len(skipped) > 4 else "")
            self._message(f"not tagged absent: slices with target dots ({where}); remove the dots first", "warning")
        self._refresh_views()
        self._schedule_autosave()

    def clear_tags(self) -> None:
        if self.supervision is not None:
            self.supervision.clear_tags()
            self._refresh_views()
            self._schedule_autosave()

