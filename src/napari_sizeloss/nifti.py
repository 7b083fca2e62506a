"""NIfTI-1 / NIfTI-2 input and output for cine MR volumes and their masks.

Qt-free; depends on nibabel and numpy only.

Axis order and units at this boundary
-------------------------------------
Arrays are returned and accepted exactly as nibabel lays them out on disk:
``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)``, where ``X, Y, Z`` are the voxel
indices ``i, j, k`` of the affine and ``T`` is the cine frame. Nothing is
transposed or squeezed here (except a trailing singleton 5th+ dimension);
napari's ``(T, Z, Y, X)`` order is the reader's business.

- ``affine``: ``(4, 4)`` float64, voxel ``(i, j, k, 1)`` -> world coordinates
  in the file's spatial unit (mm for every file this package writes). It is
  nibabel's ``img.affine``: the sform when ``sform_code > 0``, else the qform
  when ``qform_code > 0``, else the zooms-only fallback.
- ``spacing``: voxel sizes of the spatial axes in mm (``(sx, sy)`` or
  ``(sx, sy, sz)``), converted from metres or microns when the header says so.
- ``frame_time``: the 4th zoom in milliseconds (converted from the header's
  time unit), ``None`` for 2D/3D data or when the file does not record it.

Every user-facing failure raises :class:`NiftiError` (a ``ValueError``) with a
one-line message that names the file. Writes are atomic: a temporary file in
the destination directory, then :func:`os.replace`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import nibabel as nib
import numpy as np
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header

from ._atomic import publish_atomically

__all__ = [
    "NiftiError",
    "NiftiVolume",
    "load_nifti",
    "save_mask",
    "save_image",
    "atomic_save",
    "atomic_write_nifti",
]

PathLike = Union[str, "os.PathLike[str]"]
NiftiImage = Union[nib.Nifti1Image, nib.Nifti2Image]

NIFTI_SUFFIXES = (".nii", ".nii.gz")

# Unit conversions to the units this package works in (mm, ms).
_SPACE_TO_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 1e-3}
_TIME_TO_MS = {"msec": 1.0, "unknown": 1.0, "sec": 1000.0, "usec": 1e-3}

# Header fields that carry the voxel-to-world geometry (qform and sform).
_GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
)

_N1_MAGIC = b"n+1\x00"
_N1_PAIR_MAGIC = b"ni1\x00"
_N2_MAGIC = b"n+2\x00\r\n\x1a\n"
_N2_PAIR_MAGIC = b"ni2\x00\r\n\x1a\n"


class NiftiError(ValueError):
    """A NIfTI file cannot be read or written; the message names the file."""


# ------------------------------------------------------------------ the volume
@dataclass(eq=False)
class NiftiVolume:
    """An image or mask read from (or destined for) a NIfTI file.

    Attributes
    ----------
    data : numpy.ndarray
        ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)``, as on disk. float32 for
        images unless the loader was asked for another dtype.
    affine : numpy.ndarray
        ``(4, 4)`` float64 voxel-to-world matrix (sform if its code > 0, else
        qform, as nibabel's ``img.affine``), world unit as in the header (mm).
    header : Nifti1Header or Nifti2Header
        A private copy of the file's header (its data shape matches ``data``).
    path : pathlib.Path or None
        The file it was read from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Nifti1Header
    path: Path | None = None

    @property
    def ndim(self) -> int:
        """Number of data axes (2, 3 or 4)."""
        return int(np.ndim(self.data))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(X, Y)`` or ``(X, Y, Z)``: the first ``min(3, ndim)`` dimensions."""
        return tuple(int(n) for n in np.shape(self.data)[: min(3, self.ndim)])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size of the spatial axes in mm: ``(sx, sy)`` or ``(sx, sy, sz)``."""
        return _spacing_mm(self.header, min(3, self.ndim))

    @property
    def frame_time(self) -> float | None:
        """Time between cine frames in ms (4th zoom), ``None`` for 2D/3D data.

        Converted from the header's time unit (s, ms, us; ``unknown`` is read
        as ms). ``None`` as well when the 4th axis is not time (Hz, ppm, rad)
        or its zoom is 0 (not recorded).
        """
        if self.ndim < 4:
            return None
        return _frame_time_ms(self.header)

    @property
    def qform_code(self) -> int:
        """The header's qform code (0 unknown, 1 scanner, 2 aligned, ...)."""
        return int(self.header["qform_code"])

    @property
    def sform_code(self) -> int:
        """The header's sform code (0 unknown, 1 scanner, 2 aligned, ...)."""
        return int(self.header["sform_code"])


def _spacing_mm(header: Nifti1Header, n_spatial: int) -> tuple[float, ...]:
    space_unit = header.get_xyzt_units()[0]
    scale = _SPACE_TO_MM.get(space_unit, 1.0)
    zooms = header.get_zooms()[:n_spatial]
    return tuple(_as_float(z) * scale for z in zooms)


def _as_float(value) -> float:
    """A header number as the shortest decimal that round-trips its own dtype.

    NIfTI-1 stores zooms as float32: 1.2 mm comes back as 1.2, not
    1.2000000476837158.
    """
    value = np.asarray(value)[()]
    if isinstance(value, np.floating) and np.isfinite(value):
        return float(np.format_float_positional(value, unique=True, trim="0"))
    return float(value)


def _frame_time_ms(header: Nifti1Header) -> float | None:
    zooms = header.get_zooms()
    if len(zooms) < 4:
        return None
    time_unit = header.get_xyzt_units()[1]
    scale = _TIME_TO_MS.get(time_unit)
    value = _as_float(zooms[3])
    if scale is None or not np.isfinite(value) or value <= 0:
        return None
    return value * scale


# --------------------------------------------------------------------- loading
def load_nifti(
    path: PathLike,
    *,
    dtype: np.dtype | type | None = np.float32,
    allow_nan: bool = False,
) -> NiftiVolume:
    """Read a 2D, 3D or 4D NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz``).

    Parameters
    ----------
    path : str or os.PathLike
        The file. Its suffix must be ``.nii`` or ``.nii.gz`` and its header
        must carry the single-file NIfTI magic (``n+1`` or ``n+2``).
    dtype : numpy floating dtype or None, default float32
        A floating dtype returns the scaled data (``scl_slope`` /
        ``scl_inter`` applied) in that dtype. ``None`` keeps the on-disk dtype,
        scaled as nibabel does (a file with a scale factor comes back as float).
    allow_nan : bool, default False
        Keep NaN and infinite voxels instead of rejecting the file.

    Returns
    -------
    NiftiVolume
        ``data`` in ``(X, Y[, Z[, T]])`` order, the affine, a copy of the header
        and the resolved path. A trailing singleton 5th (or higher) dimension is
        dropped; nothing else is squeezed.

    Raises
    ------
    NiftiError
        The file is missing, a directory, not a single-file NIfTI (wrong
        suffix, PNG, text, Analyze, a header/image pair, truncated or corrupt
        gzip), 1D or 5D+ with non-trivial extra axes, holds NaN/inf voxels
        (unless ``allow_nan``), has zero/negative/non-finite spatial zooms or a
        negative/non-finite frame time, or a singular or non-finite affine.
    """
    path = Path(path)
    name = str(path)
    _check_readable(path)
    klass, raw_header = _sniff_header(path)
    _check_raw_header(raw_header, name)
    try:
        img = klass.from_filename(str(path), mmap=False)
        header = img.header.copy()
        affine = np.array(img.affine, dtype=np.float64)
        _check_affine(affine, name)  # before reading a possibly large data block
        data = _read_data(img, dtype, name)
    except (NiftiError, MemoryError, TypeError):
        raise
    except Exception as exc:  # nibabel, gzip, zlib, numpy: all mean a bad file
        raise NiftiError(f"cannot read {name}: {_one_line(exc)}") from exc

    data = _drop_trailing_singletons(data, name)
    if header.get_data_shape() != data.shape:
        header.set_data_shape(data.shape)
    if not allow_nan:
        _check_finite(data, name)
    return NiftiVolume(data=data, affine=affine, header=header, path=path.resolve())


def _check_readable(path: Path) -> None:
    name = str(path)
    if not path.exists():
        raise NiftiError(f"cannot read {name}: no such file")
    if path.is_dir():
        raise NiftiError(f"cannot read {name}: it is a directory, not a NIfTI file")
    if not _has_nifti_suffix(path):
        raise NiftiError(f"cannot read {name}: not a NIfTI file (expected a .nii or .nii.gz suffix)")


def _has_nifti_suffix(path: Path) -> bool:
    lower = path.name.lower()
    return any(lower.endswith(s) and len(lower) > len(s) for s in NIFTI_SUFFIXES)


def _sniff_header(path: Path) -> tuple[type, Nifti1Header]:
    """Pick the image class from the header size and magic; read the raw header.

    The header is parsed with ``check=False`` so that problems nibabel would
    silently "fix" on load (zero or negative zooms) can be rejected instead.
    """
    name = str(path)
    try:
        with nib.openers.ImageOpener(str(path)) as fobj:
            head = fobj.read(540)
    except MemoryError:
        raise
    except PermissionError as exc:
        raise NiftiError(f"cannot read {name}: permission denied") from exc
    except Exception as exc:
        raise NiftiError(f"cannot read {name}: not a NIfTI file ({_one_line(exc)})") from exc
    if len(head) < 348:
        raise NiftiError(f"cannot read {name}: not a NIfTI file (only {len(head)} header bytes)")
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 348 in sizes:
        magic = head[344:348]
        if magic == _N1_PAIR_MAGIC:
            raise NiftiError(f"cannot read {name}: a NIfTI-1 .hdr/.img pair; only single-file .nii is supported")
        if magic != _N1_MAGIC:
            raise NiftiError(f"cannot read {name}: not a NIfTI file (no NIfTI-1 magic; Analyze 7.5?)")
        klass, header_class = nib.Nifti1Image, Nifti1Header
    elif 540 in sizes:
        magic = head[4:12]
        if magic == _N2_PAIR_MAGIC:
            raise NiftiError(f"cannot read {name}: a NIfTI-2 .hdr/.img pair; only single-file .nii is supported")
        if magic != _N2_MAGIC or len(head) < 540:
            raise NiftiError(f"cannot read {name}: not a NIfTI file (bad NIfTI-2 header)")
        klass, header_class = nib.Nifti2Image, Nifti2Header
    else:
        raise NiftiError(f"cannot read {name}: not a NIfTI file (unrecognised header)")
    try:
        with nib.openers.ImageOpener(str(path)) as fobj:
            raw = header_class.from_fileobj(fobj, check=False)
    except MemoryError:
        raise
    except Exception as exc:
        raise NiftiError(f"cannot read {name}: corrupt NIfTI header ({_one_line(exc)})") from exc
    return klass, raw


def _check_raw_header(raw: Nifti1Header, name: str) -> None:
    """Reject dimensions and zooms as written in the file, before any fix-up."""
    dim = np.asarray(raw["dim"], dtype=np.int64)
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise NiftiError(f"cannot read {name}: invalid number of dimensions {ndim} in the header")
    shape = tuple(int(n) for n in dim[1 : ndim + 1])
    if any(n < 1 for n in shape):
        raise NiftiError(f"cannot read {name}: invalid data shape {shape} in the header")
    if ndim < 2:
        raise NiftiError(f"cannot read {name}: 1D data of shape {shape}; expected 2D, 3D or 4D")
    extra = shape[4:]
    if any(n != 1 for n in extra):
        raise NiftiError(
            f"cannot read {name}: {ndim}D data of shape {shape}; expected 2D, 3D or 4D (X, Y, Z, T)"
        )
    pixdim = np.asarray(raw["pixdim"], dtype=np.float64)
    n_spatial = min(3, ndim)
    spatial = pixdim[1 : 1 + n_spatial]
    if not np.all(np.isfinite(spatial)) or np.any(spatial <= 0):
        zooms = tuple(float(z) for z in spatial)
        raise NiftiError(f"cannot read {name}: voxel sizes {zooms} must be finite and positive")
    if ndim >= 4:
        frame = float(pixdim[4])
        if not np.isfinite(frame) or frame < 0:
            raise NiftiError(f"cannot read {name}: frame time (4th zoom) {frame} must be finite and >= 0")


def _read_data(img: NiftiImage, dtype, name: str) -> np.ndarray:
    if dtype is None:
        data = np.asarray(img.dataobj)
        if data.dtype.kind not in "biuf":
            raise NiftiError(f"cannot read {name}: unsupported voxel type {data.dtype}")
        return data
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating dtype or None, not {dtype}")
    on_disk = img.get_data_dtype()
    if on_disk.kind not in "biuf":
        raise NiftiError(f"cannot read {name}: unsupported voxel type {on_disk}")
    return img.get_fdata(dtype=dtype)


def _drop_trailing_singletons(data: np.ndarray, name: str) -> np.ndarray:
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 4:  # pragma: no cover - the raw header check catches this
        raise NiftiError(f"cannot read {name}: {data.ndim}D data of shape {data.shape}")
    return data


def _check_finite(data: np.ndarray, name: str) -> None:
    if data.dtype.kind != "f":
        return
    n_nan = int(np.count_nonzero(np.isnan(data)))
    if n_nan:
        raise NiftiError(f"{name} contains {n_nan} NaN voxels")
    n_inf = int(np.count_nonzero(np.isinf(data)))
    if n_inf:
        raise NiftiError(f"{name} contains {n_inf} infinite voxels")


def _check_affine(affine: np.ndarray, name: str) -> None:
    problem = _affine_problem(affine)
    if problem:
        raise NiftiError(f"{name} has {problem}")


def _affine_problem(affine: np.ndarray) -> str | None:
    """Describe what makes a voxel-to-world matrix unusable, or None if it is fine."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        return "a non-finite affine"
    linear = affine[:3, :3]
    scale = float(np.prod(np.linalg.norm(linear, axis=0)))
    det = float(np.linalg.det(linear))
    if scale == 0.0 or abs(det) <= 1e-8 * scale:
        return f"a singular affine (degenerate voxel axes, determinant {det:.3g})"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --------------------------------------------------------------------- writing
def atomic_save(img: NiftiImage, path: PathLike, *, overwrite: bool = True) -> Path:
    """Write a nibabel NIfTI image to ``path`` atomically.

    The image is written to a hidden temporary file in the destination
    directory (same ``.nii`` / ``.nii.gz`` suffix, so nibabel compresses the
    same way), flushed to disk, then renamed over ``path`` with
    :func:`os.replace`. On any error the temporary file is removed and an
    existing file at ``path`` is left untouched.

    Parameters
    ----------
    img : nibabel.Nifti1Image or nibabel.Nifti2Image
        Written as is (header, affine, data dtype).
    path : str or os.PathLike
        Destination, ending in ``.nii`` or ``.nii.gz``.
    overwrite : bool, default True
        When False an existing ``path`` is an error.

    Returns
    -------
    pathlib.Path
        The destination path.

    Raises
    ------
    NiftiError
        Bad suffix, missing or unwritable directory, ``path`` is a directory,
        ``path`` exists and ``overwrite`` is False, or nibabel cannot write.
    """
    path = Path(path)
    name = str(path)
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise TypeError(f"expected a nibabel Nifti1Image or Nifti2Image, not {type(img).__name__}")
    _check_writable(path, overwrite=overwrite)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    try:
        publish_atomically(path, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)
    except PermissionError as exc:
        raise NiftiError(f"cannot write {name}: permission denied") from exc
    except OSError as exc:
        raise NiftiError(f"cannot write {name}: {exc.strerror or _one_line(exc)}") from exc
    except (NiftiError, TypeError):
        raise
    except Exception as exc:
        raise NiftiError(f"cannot write {name}: {_one_line(exc)}") from exc
    return path


#: Name used in ``docs/architecture.md``; the same function as :func:`atomic_save`.
atomic_write_nifti = atomic_save


def _check_writable(path: Path, *, overwrite: bool) -> None:
    name = str(path)
    if not _has_nifti_suffix(path):
        raise NiftiError(f"cannot write {name}: the suffix must be .nii or .nii.gz")
    parent = path.parent
    if not parent.exists():
        # A regular file somewhere up the path makes the "directory" impossible.
        for ancestor in parent.parents:
            if ancestor.exists():
                if not ancestor.is_dir():
                    raise NiftiError(f"cannot write {name}: {ancestor} is not a directory")
                break
        raise NiftiError(f"cannot write {name}: directory does not exist")
    if not parent.is_dir():
        raise NiftiError(f"cannot write {name}: {parent} is not a directory")
    if path.is_dir():
        raise NiftiError(f"cannot write {name}: it is a directory")
    if path.exists() and not overwrite:
        raise NiftiError(f"cannot write {name}: file exists (overwrite=False)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NiftiError(f"cannot write {name}: permission denied")


def save_mask(
    path: PathLike,
    mask: np.ndarray,
    reference: NiftiVolume,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a label mask on the grid of ``reference``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.nii`` or ``.nii.gz``; must not be ``reference.path``.
    mask : array_like
        Non-negative integer labels (bool, integers, or floats holding whole
        numbers), shape either ``reference.data.shape`` (e.g. ``(X, Y, Z, T)``,
        one label per voxel and frame) or, for a 4D reference,
        ``reference.spatial_shape`` ``(X, Y, Z)`` (one 3D mask, written as a 3D
        file with the spatial zooms).
    reference : NiftiVolume
        The image the mask belongs to, usually from :func:`load_nifti`.
    overwrite : bool, default True
        When False an existing file at ``path`` is an error.

    Returns
    -------
    pathlib.Path
        The destination path.

    Notes
    -----
    The file is the same class as the reference header (NIfTI-1 or NIfTI-2)
    with the reference's qform and sform stored exactly (matrices, quaternion
    and codes), its zooms for the written axes and its ``xyzt_units``. The
    data type is uint8 when the maximum label is <= 255, else uint16;
    ``scl_slope``/``scl_inter`` are reset (nibabel writes NaN: no scaling),
    ``cal_min``/``cal_max`` and the intent are cleared, header extensions
    (which describe the source data) are dropped. If ``reference.affine`` no
    longer matches its header, both qform and sform are set to
    ``reference.affine`` (a code of 0 becomes 1, scanner).

    Raises
    ------
    NiftiError
        Wrong shape (both shapes named), negative / NaN / fractional / too
        large labels, ``path`` is the source image, bad suffix, missing or
        unwritable directory, or the write fails. No file is left behind and an
        existing file at ``path`` is untouched.
    """
    path = Path(path)
    name = str(path)
    _refuse_source(path, reference)
    labels = _mask_labels(mask, reference, name)
    img = _mask_image(labels, reference)
    return atomic_save(img, path, overwrite=overwrite)


def _refuse_source(path: Path, reference: NiftiVolume) -> None:
    source = reference.path
    if source is None:
        return
    source = Path(source)
    same = False
    try:
        same = path.resolve() == source.resolve()
    except OSError:  # pragma: no cover - resolve() on odd paths
        pass
    if not same and path.exists() and source.exists():
        try:
            same = os.path.samefile(path, source)
        except OSError:  # pragma: no cover
            pass
    if same:
        raise NiftiError(f"refusing to overwrite the source image {source} with a mask ({path})")


def _mask_labels(mask, reference: NiftiVolume, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    ref_shape = tuple(np.shape(reference.data))
    allowed = {ref_shape, tuple(reference.spatial_shape)}
    if arr.shape not in allowed:
        raise NiftiError(
            f"cannot write {name}: mask shape {arr.shape} does not match the image shape {ref_shape}"
            + (f" or its spatial shape {reference.spatial_shape}" if len(ref_shape) > 3 else "")
        )
    if arr.dtype.kind == "b":
        return arr.view(np.uint8)  # False/True are stored as 0/1 bytes
    if arr.dtype.kind not in "iuf":
        raise NiftiError(f"cannot write {name}: mask dtype {arr.dtype} is not numeric")
    if arr.dtype.kind == "f":
        n_nan = int(np.count_nonzero(~np.isfinite(arr)))
        if n_nan:
            raise NiftiError(f"cannot write {name}: mask contains {n_nan} NaN or infinite values")
    if arr.size and arr.min() < 0:
        raise NiftiError(f"cannot write {name}: mask contains negative values (min {arr.min()})")
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise NiftiError(f"cannot write {name}: mask contains non-integer values")
    top = arr.max() if arr.size else 0
    if top > np.iinfo(np.uint16).max:
        raise NiftiError(f"cannot write {name}: mask label {top} exceeds 65535")
    out_dtype = np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16
    # No copy when the labels already have that type (a layer's uint8 data): nibabel only reads them.
    return arr.astype(out_dtype, copy=False)


def _mask_image(labels: np.ndarray, reference: NiftiVolume) -> NiftiImage:
    ref_header = reference.header
    if isinstance(ref_header, Nifti2Header):
        klass, header_class = nib.Nifti2Image, Nifti2Header
    else:
        klass, header_class = nib.Nifti1Image, Nifti1Header
    ref_header = header_class.from_header(ref_header)  # a copy of this class

    # affine=None: nibabel keeps the header's geometry as it is.
    img = klass(labels, None, header=ref_header)
    hdr = img.header
    hdr.extensions.clear()
    hdr.set_data_dtype(labels.dtype)
    hdr.set_slope_inter(None, None)
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr.set_intent("none", (), allow_unknown=True)
    _copy_geometry(ref_header, hdr, labels.ndim)

    affine = np.asarray(reference.affine, dtype=np.float64)
    if not np.allclose(hdr.get_best_affine(), affine, rtol=1e-6, atol=1e-5):
        hdr.set_qform(affine, code=int(hdr["qform_code"]) or 1)
        hdr.set_sform(affine, code=int(hdr["sform_code"]) or 1)
    return img


def _copy_geometry(source: Nifti1Header, target: Nifti1Header, ndim: int) -> None:
    """Copy qform, sform, their codes, qfac and the zooms of ``ndim`` axes verbatim.

    ``pixdim[1:4]`` are copied even for 2D data: the qform matrix is built
    from them (nibabel's ``set_data_shape`` would reset the unused ones to 1).
    """
    for field in _GEOMETRY_FIELDS:
        target[field] = source[field]
    n_pixdim = 1 + max(3, ndim)
    target["pixdim"][:n_pixdim] = source["pixdim"][:n_pixdim]
    target["xyzt_units"] = source["xyzt_units"]


def save_image(
    path: PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    header: Nifti1Header | None = None,
    zooms: Sequence[float] | None = None,
    frame_time_ms: float | None = None,
) -> Path:
    """Write a float32 image atomically (phantoms, CLI outputs).

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.nii`` or ``.nii.gz``.
    data : array_like
        ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)`` finite values, stored
        as float32.
    affine : array_like
        ``(4, 4)`` voxel-to-world matrix in mm.
    header : Nifti1Header or Nifti2Header, optional
        Template header (its class picks NIfTI-1 or NIfTI-2). Its qform and
        sform (matrices, codes, zooms) are kept exactly when they already
        give ``affine`` in mm; otherwise both are set to ``affine`` with the
        header's codes (0 becomes 1).
        Without a header: NIfTI-1 with qform and sform = ``affine``, both
        code 1 (scanner).
    zooms : sequence of float, optional
        Spatial voxel sizes in mm (optionally followed by the frame time in
        ms). Default: the column norms of ``affine`` (or the kept template's
        zooms); given zooms must agree with those (relative 1e-4).
    frame_time_ms : float, optional
        Time between frames in ms (4D only); default ``zooms[3]``, else the
        template header's frame time, else 0 (unknown).

    Returns
    -------
    pathlib.Path
        The destination path. Units are written as mm and ms.
    """
    path = Path(path)
    name = str(path)
    arr = np.asarray(data)
    if arr.ndim not in (2, 3, 4):
        raise NiftiError(f"cannot write {name}: data of shape {arr.shape}; expected 2D, 3D or 4D")
    if arr.dtype.kind not in "biuf":
        raise NiftiError(f"cannot write {name}: data dtype {arr.dtype} is not numeric")
    arr = arr.astype(np.float32)
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise NiftiError(f"cannot write {name}: data contains {n_bad} NaN or infinite values")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise NiftiError(f"cannot write {name}: affine of shape {affine.shape}; expected (4, 4)")
    problem = _affine_problem(affine)
    if problem:
        raise NiftiError(f"cannot write {name}: {problem}")

    n_spatial = min(3, arr.ndim)
    frame = _frame_zoom(arr.ndim, zooms, frame_time_ms, header, name)
    template = None
    if header is not None:
        klass = nib.Nifti2Image if isinstance(header, Nifti2Header) else nib.Nifti1Image
        template = klass.header_class.from_header(header)
        in_mm = template.get_xyzt_units()[0] in ("mm", "unknown")
        if not (in_mm and np.allclose(template.get_best_affine(), affine, rtol=1e-6, atol=1e-5)):
            template = None  # its geometry is not this affine's (in mm): start afresh

    if template is None:
        spatial = _spatial_zooms(affine, zooms, n_spatial, name)
        img = (klass if header is not None else nib.Nifti1Image)(arr, None, header=header)
        hdr = img.header
        q_code = (int(header["qform_code"]) or 1) if header is not None else 1
        s_code = (int(header["sform_code"]) or 1) if header is not None else 1
        hdr.set_qform(affine, code=q_code)
        hdr.set_sform(affine, code=s_code)
    else:
        # The template already encodes this affine: keep qform/sform verbatim;
        # its zooms (which build the qform) are the spatial zooms.
        img = klass(arr, None, header=template)
        hdr = img.header
        _copy_geometry(template, hdr, arr.ndim)
        spatial = _spatial_zooms(affine, zooms, n_spatial, name, expected=template.get_zooms()[:n_spatial])
    hdr.extensions.clear()
    hdr.set_data_dtype(np.float32)
    hdr.set_slope_inter(None, None)
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr.set_zooms(spatial + ((frame,) if arr.ndim == 4 else ()))
    hdr.set_xyzt_units("mm", "msec")
    return atomic_save(img, path)


def _spatial_zooms(
    affine: np.ndarray, zooms, n_spatial: int, name: str, expected: Sequence[float] | None = None
) -> tuple[float, ...]:
    """Spatial zooms in mm: ``zooms`` checked against ``expected`` (default: the affine's)."""
    if expected is None:
        expected = np.linalg.norm(affine[:3, :n_spatial], axis=0)
    expected = tuple(float(z) for z in expected)
    if zooms is None:
        return expected
    given = tuple(float(z) for z in zooms)[:n_spatial]
    if len(given) < n_spatial or not np.all(np.isfinite(given)) or min(given) <= 0:
        raise NiftiError(
            f"cannot write {name}: zooms {tuple(zooms)} must give {n_spatial} positive voxel sizes"
        )
    if not np.allclose(given, expected, rtol=1e-4, atol=0):
        raise NiftiError(
            f"cannot write {name}: zooms {given} disagree with the voxel sizes "
            f"{tuple(round(z, 6) for z in expected)}"
        )
    return given


def _frame_zoom(ndim: int, zooms, frame_time_ms, header, name: str) -> float:
    if ndim < 4:
        if frame_time_ms is not None:
            raise NiftiError(f"cannot write {name}: frame_time_ms given for {ndim}D data")
        return 0.0
    if frame_time_ms is None and zooms is not None and len(zooms) > 3:
        frame_time_ms = zooms[3]
    if frame_time_ms is None and header is not None:
        frame_time_ms = _frame_time_ms(header)
    if frame_time_ms is None:
        return 0.0
    frame = float(frame_time_ms)
    if not np.isfinite(frame) or frame < 0:
        raise NiftiError(f"cannot write {name}: frame time {frame} ms must be finite and >= 0")
    return frame
