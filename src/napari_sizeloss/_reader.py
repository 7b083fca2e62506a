"""napari reader for NIfTI-1/2 files (``*.nii``, ``*.nii.gz``).

Axis order
----------
On disk (and in the core) a volume is ``(X, Y, Z, T)`` (2D: ``(X, Y)``, 3D:
``(X, Y, Z)``). napari wants the slowest axes first and the displayed plane
last, so every axis order is reversed:

============  =====================  =========================
on disk       napari layer data      layer ``scale``
============  =====================  =========================
``(X, Y)``    ``(Y, X)``             ``(dy, dx)`` mm
``(X, Y, Z)`` ``(Z, Y, X)``          ``(dz, dy, dx)`` mm
``(X,Y,Z,T)`` ``(T, Z, Y, X)``       ``(dt, dz, dy, dx)`` ms, mm
============  =====================  =========================

The displayed plane is therefore ``(Y, X)``: rows are ``Y``, columns ``X``
(voxel indices, not scanner directions: the oblique affine is *not* applied
to the display, so dots and brush strokes land on whole voxels).

Layer metadata
--------------
Each layer's ``metadata`` keeps what is needed to write a mask back on the
source grid (see :func:`nifti_metadata`): ``affine`` (4x4 float64),
``header`` (a copy of the nibabel header), ``source_path`` (str or None),
``nifti_shape`` (the on-disk shape), ``spacing`` (``(sx, sy[, sz])`` mm),
``frame_time_ms`` (float or None) and ``axes`` (``"TZYX"``...).

Integer files holding a few small non-negative values (masks, label maps)
open as labels layers, everything else as an image layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .nifti import NiftiError, NiftiVolume, load_nifti

LayerData = tuple[np.ndarray, dict[str, Any], str]

#: Axis names of napari layer data for 2D, 3D and 4D volumes.
NAPARI_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}

#: At most this many distinct values (all in 0..255) make an integer file a labels layer.
MAX_LABEL_VALUES = 64

_SUFFIXES = (".nii", ".nii.gz")


# ------------------------------------------------------------------ axis order
def to_napari_order(array: np.ndarray) -> np.ndarray:
    """``(X, Y[, Z[, T]])`` -> ``(([T,] Z,) Y, X)``: a reversed-axes view, no copy."""
    return np.asarray(array).transpose(tuple(range(np.ndim(array)))[::-1])


def to_nifti_order(array: np.ndarray) -> np.ndarray:
    """``(([T,] Z,) Y, X)`` -> ``(X, Y[, Z[, T]])``: the inverse of :func:`to_napari_order`."""
    return to_napari_order(array)


# ---------------------------------------------------------------- metadata
def nifti_metadata(volume: NiftiVolume) -> dict[str, Any]:
    """The layer metadata that lets a mask be written back on ``volume``'s grid.

    Parameters
    ----------
    volume : NiftiVolume
        Data ``(X, Y[, Z[, T]])``.

    Returns
    -------
    dict
        ``affine`` (4, 4) float64, ``header`` (a copy), ``source_path`` (str or
        None), ``nifti_shape`` (tuple, on-disk order), ``spacing`` (mm,
        ``(sx, sy[, sz])``), ``frame_time_ms`` (float or None), ``axes``
        (napari order, e.g. ``"TZYX"``).
    """
    return {
        "affine": np.array(volume.affine, dtype=np.float64),
        "header": volume.header.copy(),
        "source_path": str(volume.path) if volume.path is not None else None,
        "nifti_shape": tuple(int(n) for n in np.shape(volume.data)),
        "spacing": tuple(float(s) for s in volume.spacing),
        "frame_time_ms": volume.frame_time,
        "axes": NAPARI_AXES[volume.ndim],
    }


def napari_scale(spacing: Sequence[float], frame_time_ms: float | None, ndim: int) -> tuple[float, ...]:
    """Layer scale in napari order: ``(dt, dz, dy, dx)`` for 4D, ``(dz, dy, dx)`` 3D, ``(dy, dx)`` 2D.

    ``dt`` is the frame time in ms (1 when unknown); spatial steps are mm.
    """
    steps = list(float(s) for s in spacing[: min(3, ndim)])
    if ndim == 4:
        steps.append(float(frame_time_ms) if frame_time_ms else 1.0)
    return tuple(steps[::-1])


def reference_volume(metadata: dict[str, Any]) -> NiftiVolume | None:
    """A data-less :class:`NiftiVolume` for :func:`~napari_sizeloss.nifti.save_mask`.

    Returns None when ``metadata`` does not come from this reader (no affine,
    header or shape).
    """
    try:
        affine = np.asarray(metadata["affine"], dtype=np.float64)
        header = metadata["header"]
        shape = tuple(int(n) for n in metadata["nifti_shape"])
    except (KeyError, TypeError, ValueError):
        return None
    if affine.shape != (4, 4) or header is None:
        return None
    path = metadata.get("source_path")
    # save_mask only looks at the reference's shape: a zero-strided array costs nothing.
    data = np.broadcast_to(np.zeros((), dtype=np.uint8), shape)
    return NiftiVolume(data=data, affine=affine, header=header, path=Path(path) if path else None)


def looks_like_labels(data: np.ndarray) -> bool:
    """True for integer data whose values are few (<= 64) and within 0..255: a mask or label map."""
    if data.dtype.kind not in "biu" or data.size == 0:
        return data.dtype.kind == "b"
    low, high = int(data.min()), int(data.max())
    if low < 0 or high > 255:
        return False
    counts = np.bincount(np.asarray(data, dtype=np.uint8).ravel(), minlength=1)
    return int(np.count_nonzero(counts)) <= MAX_LABEL_VALUES


def _contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Robust display range (0.5th-99.5th percentiles of a subsample)."""
    flat = data.ravel()
    step = max(1, flat.size // 200_000)
    low, high = np.percentile(flat[::step], (0.5, 99.5))
    if not high > low:
        low, high = float(flat.min()), float(flat.max())
        if not high > low:
            high = low + 1.0
    return float(low), float(high)


def layer_data_from_volume(
    volume: NiftiVolume, *, name: str | None = None, layer_type: str | None = None
) -> LayerData:
    """A napari layer-data tuple for one NIfTI volume.

    Parameters
    ----------
    volume : NiftiVolume
        ``data`` in ``(X, Y[, Z[, T]])`` order.
    name : str, optional
        Layer name (default: the file name without ``.nii``/``.nii.gz``).
    layer_type : {"image", "labels"}, optional
        Default: ``"labels"`` when :func:`looks_like_labels`, else ``"image"``.

    Returns
    -------
    (data, kwargs, layer_type)
        ``data`` in napari order (``(T, Z, Y, X)`` for 4D; a view when
        possible), ``kwargs`` with ``name``, ``scale``, ``axis_labels``,
        ``units`` and ``metadata`` (:func:`nifti_metadata`).
    """
    data = np.asarray(volume.data)
    if layer_type is None:
        layer_type = "labels" if looks_like_labels(data) else "image"
    if name is None:
        name = _stem(volume.path) if volume.path is not None else "volume"
    ndim = data.ndim
    axes = NAPARI_AXES[ndim]
    units = tuple("ms" if a == "T" else "mm" for a in axes)
    if ndim == 4 and not volume.frame_time:
        units = ("pixel",) + units[1:]
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": napari_scale(volume.spacing, volume.frame_time, ndim),
        "axis_labels": tuple(a.lower() for a in axes),
        "units": units,
        "metadata": nifti_metadata(volume),
    }
    if layer_type == "labels":
        if data.dtype.kind == "b" or (data.dtype.kind in "iu" and data.dtype.itemsize > 1):
            data = data.astype(np.uint8)
    else:
        data = data.astype(np.float32, copy=False)
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = _contrast_limits(data)
    return to_napari_order(data), kwargs, layer_type


def _stem(path: Path | str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------- reader
def _is_nifti_path(path: str) -> bool:
    lower = str(path).lower()
    return any(lower.endswith(s) for s in _SUFFIXES)


def napari_get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_nifti` for NIfTI paths it can open, else None.

    ``path`` may be one path or a list of paths (all must be NIfTI). Only the
    header of each file is checked here; a file with a bad header, a wrong
    suffix or a missing file gives None so that napari can try other readers.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_is_nifti_path(str(p)) for p in paths):
        return None
    for p in paths:
        if not _header_ok(Path(p)):
            return None
    return read_nifti


def _header_ok(path: Path) -> bool:
    import nibabel as nib

    if not path.is_file():
        return False
    try:
        img = nib.load(str(path))
    except Exception:  # nibabel raises many kinds on a bad file
        return False
    shape = tuple(img.shape)
    return isinstance(img, nib.Nifti1Image) and len(shape) >= 2 and all(n == 1 for n in shape[4:])


def read_nifti(path: str | Sequence[str]) -> list[LayerData]:
    """Read NIfTI files into napari layer data (see the module docstring for axes and metadata).

    Parameters
    ----------
    path : str or list of str

    Returns
    -------
    list of (data, kwargs, layer_type)
        One entry per file. A file whose data turns out unreadable (corrupt
        data, NaN voxels) is skipped with a warning naming it, so that the
        others still open.

    Raises
    ------
    NiftiError
        When no file could be read (the message names the first one).
    """
    import warnings

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers, errors = [], []
    for p in paths:
        try:
            volume = load_nifti(p, dtype=None)
        except NiftiError as exc:
            errors.append(exc)
            continue
        layers.append(layer_data_from_volume(volume))
    if errors and not layers:
        raise errors[0]
    for exc in errors:
        warnings.warn(str(exc), stacklevel=2)
    return layers
