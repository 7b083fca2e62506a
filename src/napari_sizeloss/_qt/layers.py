"""The image volume's geometry and the layers the widget makes for it.

Axis orders: napari layers hold ``(T, Z, Y, X)`` (3D: ``(Z, Y, X)``); the core
works on ``(X, Y, Z, T)``. :class:`VolumeGeometry` converts between the two
and always gives the core a 4D array (a 3D volume gets ``T = 1``).

The seeds layer is a napari Points layer: one click in "add" mode places one
dot, drawn with a fixed on-screen size range so it stays visible at any zoom.
Each point has a ``kind`` feature (``"target"`` or ``"background"``); before
training the points are rasterised into the core's uint8 seeds array
(``SEED_TARGET`` / ``SEED_BACKGROUND`` discs of a small radius).

No torch and no Qt here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..weak_labels import SEED_BACKGROUND, SEED_TARGET

#: Layer-metadata keys that tie a seeds or prediction layer to its image.
ROLE_KEY = "sizeloss_role"
IMAGE_KEY = "sizeloss_image"
ROLE_SEEDS = "seeds"
ROLE_PREDICTION = "prediction"

TARGET = "target"
BACKGROUND = "background"
KIND_CODES = {TARGET: SEED_TARGET, BACKGROUND: SEED_BACKGROUND}
TARGET_COLOR = "#ffd21f"  # gold
BACKGROUND_COLOR = "#1fc3ff"  # sky blue
PREDICTION_COLOR = "#ff5a1f"  # orange-red

#: Smallest and largest on-screen dot diameter (canvas pixels).
DOT_CANVAS_SIZE = (7, 40)


class VolumeError(ValueError):
    """The chosen layer cannot be segmented as a volume (none, 2D, RGB, 5D+)."""


class SeedsShapeError(ValueError):
    """A seeds labels layer does not have the image's shape."""


@dataclass(frozen=True)
class VolumeGeometry:
    """Shape, scale and NIfTI geometry of an image layer.

    Attributes
    ----------
    name : str
        The image layer's name.
    shape : tuple of int
        ``(X, Y, Z, T)`` in the core's order (``T = 1`` for a 3D image).
    layer_ndim : int
        3 (``(Z, Y, X)``) or 4 (``(T, Z, Y, X)``).
    scale, translate : tuple of float
        The layer's, in napari order.
    units : tuple of str or None
        The layer's axis units (e.g. ``("millisecond", "millimeter", ...)``).
    spacing : tuple of float or None
        ``(sx, sy, sz)`` in mm when the image comes with NIfTI geometry,
        else None (sizes are then in pixels).
    metadata : dict
        The image layer's metadata (affine, header, source path...).
    """

    name: str
    shape: tuple[int, int, int, int]
    layer_ndim: int
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    spacing: tuple[float, float, float] | None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    units: tuple[str, ...] | None = None

    @property
    def pixel_area_mm2(self) -> float | None:
        """In-plane area of one pixel (``sx * sy``, mm^2), None when the spacing is unknown."""
        return None if self.spacing is None else float(self.spacing[0] * self.spacing[1])

    @property
    def unit(self) -> str:
        """``"mm2"`` when the spacing is known, else ``"px"``."""
        return "px" if self.spacing is None else "mm2"

    @property
    def slice_area(self) -> float:
        """Area of a whole ``(X, Y)`` slice, in :attr:`unit`."""
        px = float(self.shape[0] * self.shape[1])
        return px * (self.pixel_area_mm2 or 1.0)

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """Shape of a layer on this image: ``(T, Z, Y, X)`` or ``(Z, Y, X)``."""
        X, Y, Z, T = self.shape
        return (T, Z, Y, X) if self.layer_ndim == 4 else (Z, Y, X)

    @property
    def source_path(self) -> str | None:
        return self.metadata.get("source_path")

    def to_core(self, layer_data: np.ndarray) -> np.ndarray:
        """Layer-order array -> ``(X, Y, Z, T)`` view (``T = 1`` for 3D)."""
        core = np.asarray(layer_data).T
        return core if self.layer_ndim == 4 else core[..., None]

    def to_layer(self, core: np.ndarray) -> np.ndarray:
        """``(X, Y, Z, T)`` -> layer-order view (drops ``T`` for a 3D image)."""
        core = np.asarray(core)
        return core.T if self.layer_ndim == 4 else core[..., 0].T

    def zt_of(self, data_coords: Iterable[float]) -> tuple[int, int]:
        """``(z, t)`` slice index of a point in layer data coordinates (rounded, clipped)."""
        coords = np.asarray(list(data_coords), dtype=float)[-self.layer_ndim :]
        Z, T = self.shape[2], self.shape[3]
        if self.layer_ndim == 4:
            t, z = coords[0], coords[1]
        else:
            t, z = 0.0, coords[0]
        return int(np.clip(np.round(z), 0, Z - 1)), int(np.clip(np.round(t), 0, T - 1))

    def to_area(self, pixels: float | np.ndarray) -> float | np.ndarray:
        """Pixels -> :attr:`unit` (mm^2 when the spacing is known)."""
        return pixels * (self.pixel_area_mm2 or 1.0)

    def to_pixels(self, area: float | np.ndarray) -> float | np.ndarray:
        """:attr:`unit` -> pixels."""
        return area / (self.pixel_area_mm2 or 1.0)

    def layer_kwargs(self) -> dict[str, Any]:
        """Scale, translate and axis names for a layer drawn on this image."""
        axes = ("t", "z", "y", "x") if self.layer_ndim == 4 else ("z", "y", "x")
        kwargs = {"scale": self.scale, "translate": self.translate, "axis_labels": axes}
        if self.units is not None:
            kwargs["units"] = self.units
        return kwargs


def geometry_of(layer) -> VolumeGeometry:
    """The :class:`VolumeGeometry` of an image layer.

    Raises
    ------
    VolumeError
        No layer, an RGB or multiscale image, or an image that is not 3D
        ``(Z, Y, X)`` or 4D ``(T, Z, Y, X)``.
    """
    if layer is None:
        raise VolumeError("choose an image layer first (open a NIfTI file or File > Open Sample > Cine MR phantom)")
    name = layer.name
    if getattr(layer, "rgb", False):
        raise VolumeError(f"image {name!r} is RGB; a grey-level volume is needed")
    if getattr(layer, "multiscale", False):
        raise VolumeError(f"image {name!r} is multiscale; open a single-resolution volume")
    shape = tuple(int(n) for n in layer.data.shape)
    if len(shape) < 3:
        raise VolumeError(
            f"image {name!r} is 2D {shape}; a volume (Z, Y, X) or a cine (T, Z, Y, X) is needed"
        )
    if len(shape) > 4:
        raise VolumeError(f"image {name!r} has {len(shape)} dimensions {shape}; at most 4 (T, Z, Y, X) are supported")
    if min(shape[-2:]) < 16:
        raise VolumeError(f"image {name!r} slices are {shape[-1]} x {shape[-2]} px; at least 16 x 16 is needed")
    metadata = dict(layer.metadata or {})
    spacing = metadata.get("spacing")
    spacing = tuple(float(s) for s in spacing) if spacing is not None and len(spacing) >= 3 else None
    if len(shape) == 4:
        T, Z, Y, X = shape
    else:
        (Z, Y, X), T = shape, 1
    return VolumeGeometry(
        name=name,
        shape=(X, Y, Z, T),
        layer_ndim=len(shape),
        scale=tuple(float(s) for s in layer.scale),
        translate=tuple(float(s) for s in layer.translate),
        spacing=spacing[:3] if spacing else None,
        metadata=metadata,
        units=_units_of(layer),
    )


def _units_of(layer) -> tuple[str, ...] | None:
    try:
        return tuple(str(u) for u in layer.units)
    except (AttributeError, TypeError):
        return None


def current_zt(viewer, geometry: VolumeGeometry, layer) -> tuple[int, int]:
    """The ``(z, t)`` slice of ``layer`` (drawn on ``geometry``) that the viewer shows."""
    point = np.asarray(viewer.dims.point, dtype=float)
    data = np.asarray(layer.world_to_data(point[-layer.ndim :]), dtype=float)
    return geometry.zt_of(data)


def world_point(geometry: VolumeGeometry, z: int, t: int) -> dict[int, float]:
    """World coordinates (layer axis -> value) of slice ``z`` of frame ``t``."""
    out = {}
    if geometry.layer_ndim == 4:
        out[0] = geometry.translate[0] + t * geometry.scale[0]
        out[1] = geometry.translate[1] + z * geometry.scale[1]
    else:
        out[0] = geometry.translate[0] + z * geometry.scale[0]
    return out


# ---------------------------------------------------------------- seeds
def disc_offsets(radius: int) -> np.ndarray:
    """Integer ``(dx, dy)`` offsets ``(n, 2)`` of a disc of ``radius`` px (``dx^2 + dy^2 <= r^2``)."""
    r = max(0, int(radius))
    dx, dy = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dx * dx + dy * dy <= r * r
    return np.stack([dx[keep], dy[keep]], axis=1)


def rasterise_points(
    points: np.ndarray, kinds: Iterable[str], geometry: VolumeGeometry, radius: int = 1
) -> tuple[np.ndarray, int]:
    """Seeds array from dots.

    Parameters
    ----------
    points : ndarray float (N, layer_ndim)
        Dot centres in layer data coordinates ``(t, z, y, x)`` or ``(z, y, x)``.
    kinds : iterable of str
        ``"target"`` or ``"background"`` per dot.
    geometry : VolumeGeometry
    radius : int
        Each dot is a disc of this radius (px) in its ``(X, Y)`` slice, cut at
        the slice border.

    Returns
    -------
    seeds : ndarray uint8 (X, Y, Z, T)
        0 unlabelled, 1 target, 2 background; later dots win where discs overlap.
    n_outside : int
        Dots whose centre lies outside the volume (ignored).
    """
    X, Y, Z, T = geometry.shape
    seeds = np.zeros((X, Y, Z, T), dtype=np.uint8)
    points = np.asarray(points, dtype=float).reshape(-1, geometry.layer_ndim) if len(points) else np.zeros((0, geometry.layer_ndim))
    kinds = list(kinds)
    if len(kinds) != len(points):
        raise ValueError(f"{len(points)} dots but {len(kinds)} kinds")
    offsets = disc_offsets(radius)
    outside = 0
    for coords, kind in zip(points, kinds):
        idx = np.round(coords).astype(int)
        if geometry.layer_ndim == 4:
            t, z, y, x = idx
        else:
            (z, y, x), t = idx, 0
        if not (0 <= x < X and 0 <= y < Y and 0 <= z < Z and 0 <= t < T):
            outside += 1
            continue
        code = KIND_CODES.get(str(kind))
        if code is None:
            raise ValueError(f"unknown dot kind {kind!r}; expected 'target' or 'background'")
        xs, ys = x + offsets[:, 0], y + offsets[:, 1]
        inside = (xs >= 0) & (xs < X) & (ys >= 0) & (ys < Y)
        seeds[xs[inside], ys[inside], z, t] = code
    return seeds, outside


def dot_kinds(layer) -> list[str]:
    """The ``kind`` of each point of a seeds Points layer (``"target"`` when missing)."""
    features = layer.features
    if "kind" not in features:
        return [TARGET] * len(layer.data)
    return [str(k) if str(k) in KIND_CODES else TARGET for k in features["kind"]]


def seeds_from_layer(layer, geometry: VolumeGeometry, radius: int = 1) -> tuple[np.ndarray, int]:
    """Seeds ``(X, Y, Z, T)`` uint8 from a Points layer (dots) or a Labels layer (codes 0/1/2).

    Returns ``(seeds, n_outside)``; a Labels layer must have the image's shape
    (:class:`SeedsShapeError` otherwise) and gives ``n_outside = 0``.
    """
    from napari.layers import Points

    if isinstance(layer, Points):
        return rasterise_points(np.asarray(layer.data), dot_kinds(layer), geometry, radius)
    data = np.asarray(layer.data)
    if data.shape != geometry.layer_shape:
        raise SeedsShapeError(
            f"seeds layer {layer.name!r} has shape {data.shape}; image {geometry.name!r} has {geometry.layer_shape}"
        )
    return np.ascontiguousarray(geometry.to_core(data)).astype(np.uint8), 0


def points_summary(points: np.ndarray, kinds: list[str], geometry: VolumeGeometry) -> tuple[int, int, np.ndarray, int]:
    """Count dots without rasterising them.

    Returns
    -------
    n_target, n_background : int
        Dots inside the volume, by kind.
    present : ndarray bool (Z, T)
        Slices with at least one target dot.
    n_outside : int
        Dots outside the volume.
    """
    X, Y, Z, T = geometry.shape
    present = np.zeros((Z, T), dtype=bool)
    n_target = n_background = n_outside = 0
    for coords, kind in zip(np.asarray(points, dtype=float).reshape(-1, geometry.layer_ndim), kinds):
        idx = np.round(coords).astype(int)
        t, z, y, x = idx if geometry.layer_ndim == 4 else (0, *idx)
        if not (0 <= x < X and 0 <= y < Y and 0 <= z < Z and 0 <= t < T):
            n_outside += 1
        elif kind == BACKGROUND:
            n_background += 1
        else:
            n_target += 1
            present[z, t] = True
    return n_target, n_background, present, n_outside


def present_slices(seeds: np.ndarray) -> np.ndarray:
    """bool ``(Z, T)``: slices with at least one target dot."""
    return (seeds == SEED_TARGET).any(axis=(0, 1))


# ---------------------------------------------------------------- layers
def _companion_metadata(geometry: VolumeGeometry, role: str) -> dict[str, Any]:
    meta = {k: v for k, v in geometry.metadata.items() if k not in (ROLE_KEY, IMAGE_KEY, "label_names", "target_label")}
    meta[ROLE_KEY] = role
    meta[IMAGE_KEY] = geometry.name
    return meta


def make_seeds_layer(geometry: VolumeGeometry, radius: int = 1):
    """An empty Points layer for dots on ``geometry``'s image, in "add" mode.

    New dots are targets (gold) until ``feature_defaults["kind"]`` is set to
    ``"background"`` (sky blue).
    """
    import pandas as pd
    from napari.layers import Points

    kinds = pd.Series([], dtype=pd.CategoricalDtype([TARGET, BACKGROUND]))
    layer = Points(
        np.zeros((0, geometry.layer_ndim)),
        ndim=geometry.layer_ndim,
        name=f"{geometry.name} seeds",
        features=pd.DataFrame({"kind": kinds}),
        face_color="kind",
        face_color_cycle=[TARGET_COLOR, BACKGROUND_COLOR],
        border_color="black",
        border_width=0.15,
        border_width_is_relative=True,
        size=2 * max(0, int(radius)) + 1,
        canvas_size_limits=DOT_CANVAS_SIZE,
        metadata=_companion_metadata(geometry, ROLE_SEEDS),
        **geometry.layer_kwargs(),
    )
    layer.feature_defaults["kind"] = TARGET
    return layer


def make_prediction_layer(geometry: VolumeGeometry):
    """An empty Labels layer (uint8, label 1 = target) on ``geometry``'s image.

    Its metadata carries the image's NIfTI geometry so that File > Save and
    Export write it on the source grid.
    """
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    colormap = DirectLabelColormap(color_dict={0: "transparent", 1: PREDICTION_COLOR, None: "magenta"})
    return Labels(
        # np.full writes its memory now, when the image is chosen; np.zeros' pages would be
        # mapped (page faults) by the first whole-volume write, on the GUI thread as a round ends
        np.full(geometry.layer_shape, 0, dtype=np.uint8),
        name=f"{geometry.name} prediction",
        opacity=0.45,
        colormap=colormap,
        metadata=_companion_metadata(geometry, ROLE_PREDICTION),
        **geometry.layer_kwargs(),
    )


def find_companion(viewer, role: str, image_name: str):
    """The layer made for ``image_name`` with ``role`` (seeds or prediction), or None."""
    for layer in viewer.layers:
        meta = layer.metadata or {}
        if meta.get(ROLE_KEY) == role and meta.get(IMAGE_KEY) == image_name:
            return layer
    return None
