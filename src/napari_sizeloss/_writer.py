"""napari writer: a labels layer to ``.nii.gz`` on its source image's grid.

The layer's data is in napari order (``(T, Z, Y, X)`` for 4D, see
:mod:`napari_sizeloss._reader`); it is written in the NIfTI order
``(X, Y, Z, T)`` with the source image's affine, qform/sform codes, zooms and
units, taken from the layer's ``metadata`` (which this plugin's reader,
sample data and widget fill in). The write is atomic and never replaces the
source image.

A labels layer without that metadata (e.g. one made with napari's "new
labels" button) is written with a diagonal affine built from the layer's
scale and translate, and a warning says so.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._reader import reference_volume, to_nifti_order
from .nifti import NiftiError, NiftiVolume, save_mask

_SUFFIXES = (".nii.gz", ".nii")


def nifti_path(path: str | Path) -> Path:
    """``path`` with ``.nii.gz`` appended unless it already ends in ``.nii`` or ``.nii.gz``."""
    path = Path(path)
    if not any(path.name.lower().endswith(s) for s in _SUFFIXES):
        path = path.with_name(path.name + ".nii.gz")
    return path


def _fallback_reference(shape_nifti: tuple[int, ...], meta: dict[str, Any]) -> NiftiVolume:
    """A reference grid from the layer's scale and translate (napari order), for layers with no NIfTI metadata."""
    import nibabel as nib

    ndim = len(shape_nifti)
    scale = tuple(float(s) for s in (meta.get("scale") if meta.get("scale") is not None else (1.0,) * ndim))
    translate = tuple(float(s) for s in (meta.get("translate") if meta.get("translate") is not None else (0.0,) * ndim))
    scale_xyz = scale[::-1][: min(3, ndim)]
    origin_xyz = translate[::-1][: min(3, ndim)]
    affine = np.eye(4)
    for i, (s, o) in enumerate(zip(scale_xyz, origin_xyz)):
        affine[i, i] = s
        affine[i, 3] = o
    header = nib.Nifti1Header()
    header.set_data_shape(shape_nifti)
    zooms = list(scale_xyz) + ([scale[0]] if ndim == 4 else [])
    header.set_zooms(zooms)
    header.set_xyzt_units("mm", "msec")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    data = np.broadcast_to(np.zeros((), dtype=np.uint8), shape_nifti)
    return NiftiVolume(data=data, affine=affine, header=header, path=None)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for labels layers.

    Parameters
    ----------
    path : str
        Destination; ``.nii.gz`` is appended when it has no NIfTI suffix.
    data : array_like
        Labels in napari order, ``(T, Z, Y, X)`` / ``(Z, Y, X)`` / ``(Y, X)``,
        non-negative integers.
    meta : dict
        The layer's attributes; ``meta["metadata"]`` holds the source image's
        NIfTI geometry (see :func:`napari_sizeloss._reader.nifti_metadata`).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    NiftiError
        The shape does not match the source image, the path is the source
        image, the directory is missing or unwritable, or the labels are not
        non-negative integers. Nothing is left behind.
    """
    target = nifti_path(path)
    labels = to_nifti_order(np.asarray(data))
    metadata = meta.get("metadata") or {}
    reference = reference_volume(metadata)
    if reference is None:
        warnings.warn(
            f"layer {meta.get('name', '')!r} carries no NIfTI geometry; {target.name} is written "
            "with a diagonal affine from the layer scale",
            stacklevel=2,
        )
        reference = _fallback_reference(labels.shape, meta)
    elif labels.shape != tuple(np.shape(reference.data)):
        source = metadata.get("source_path") or "the source image"
        raise NiftiError(
            f"cannot write {target}: labels of shape {labels.shape} (X, Y, Z, T order; napari shape "
            f"{np.shape(data)}) do not match {source} of shape {tuple(np.shape(reference.data))}"
        )
    written = save_mask(target, labels, reference)
    return [str(written)]
