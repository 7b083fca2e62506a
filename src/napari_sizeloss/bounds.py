"""Size bounds: the prior knowledge of the size-constrained loss.

A :class:`SizeBounds` is an interval ``[lower, upper]`` on the size of the
target in one 2D slice (an *area*, unit ``"px"`` or ``"mm2"``) or in one
volume (unit ``"vox"`` or ``"mm3"``; ``"ml"`` is accepted on input and
stored as mm^3, 1 mL = 1000 mm^3). Conversions use the voxel spacing
``(sx, sy[, sz])`` in mm: one pixel covers ``sx * sy`` mm^2, one voxel
``sx * sy * sz`` mm^3.

:func:`bounds_from_annotation` is the paper's recipe (one annotated subject:
lower = 1.1 x its smallest non-empty slice area, upper = 0.9 x its largest)
and :func:`slice_bounds` turns one :class:`SizeBounds` plus the user's slice
tags into the per-slice ``(Z, T)`` bounds that the loss sees.
:func:`widen_to_admit` widens bounds that a slice the user drew in full
(a correction) shows to be wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Sequence

import numpy as np

__all__ = [
    "AREA_UNITS",
    "VOLUME_UNITS",
    "BoundsError",
    "SizeBounds",
    "annotation_sizes",
    "bounds_from_annotation",
    "slice_bounds",
    "widen_to_admit",
]

#: Units of a per-slice size (area).
AREA_UNITS = ("px", "mm2")
#: Units of a per-volume size.
VOLUME_UNITS = ("vox", "mm3")
_ML_IN_MM3 = 1000.0
_PRINTED = {"px": "px", "mm2": "mm^2", "vox": "vox", "mm3": "mm^3"}


class BoundsError(ValueError):
    """Size bounds that cannot be used: invalid numbers, unit, spacing or recipe input."""


# ------------------------------------------------------------------ helpers
def _number(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.number)):
        raise BoundsError(f"{what} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise BoundsError(f"{what} must be finite; got {value}")
    return value


def _fmt(value: float) -> str:
    """A size as people write it: ``98``, ``107.8``."""
    return str(int(round(value))) if abs(value - round(value)) < 1e-9 else f"{value:.1f}"


def _spacing(spacing: Sequence[float] | None, needed: int, why: str) -> tuple[float, ...]:
    """The first ``needed`` entries of ``spacing``, validated (mm, finite, > 0)."""
    if spacing is None:
        raise BoundsError(f"{why} needs the voxel spacing, and none was given")
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise BoundsError(f"spacing must be a sequence of numbers in mm; got {spacing!r}") from None
    if len(values) < needed:
        raise BoundsError(f"{why} needs {needed} spacing values (mm); got {values}")
    values = values[:needed]
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise BoundsError(f"spacing {values} must be finite and > 0 mm")
    return values


def _unit(unit: Any) -> str:
    if not isinstance(unit, str) or unit not in AREA_UNITS + VOLUME_UNITS:
        raise BoundsError(f"unknown size unit {unit!r}; use px or mm2 (per slice), vox, mm3 or ml (per volume)")
    return unit


# --------------------------------------------------------------- SizeBounds
@dataclass(frozen=True)
class SizeBounds:
    """An interval ``[lower, upper]`` on the target's size, with its unit.

    Parameters
    ----------
    lower, upper : float
        Bounds, finite, ``0 <= lower <= upper``.
    unit : str, default ``"px"``
        ``"px"`` (pixels) or ``"mm2"`` for the area of a 2D slice;
        ``"vox"`` (voxels) or ``"mm3"`` for the size of a volume. ``"ml"``
        (or ``"mL"``) is accepted and stored as ``"mm3"`` (x 1000).

    Raises
    ------
    BoundsError
        On a non-finite or negative number, ``lower > upper`` or an unknown unit.
    """

    lower: float
    upper: float
    unit: str = "px"

    def __post_init__(self) -> None:
        unit = self.unit
        factor = 1.0
        if isinstance(unit, str) and unit.lower() == "ml":
            unit, factor = "mm3", _ML_IN_MM3
        unit = _unit(unit)
        lower = _number(self.lower, "lower bound") * factor
        upper = _number(self.upper, "upper bound") * factor
        shown = _PRINTED[unit]
        if lower < 0:
            raise BoundsError(f"lower bound {_fmt(lower)} {shown} is negative")
        if lower > upper:
            raise BoundsError(f"lower bound {_fmt(lower)} {shown} is above the upper bound {_fmt(upper)} {shown}")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "unit", unit)

    # ----------------------------------------------------------- kinds
    @property
    def is_area(self) -> bool:
        """True for per-slice bounds (``px``, ``mm2``)."""
        return self.unit in AREA_UNITS

    @property
    def is_volume(self) -> bool:
        """True for per-volume bounds (``vox``, ``mm3``)."""
        return self.unit in VOLUME_UNITS

    def _times(self, factor: float, unit: str) -> SizeBounds:
        return SizeBounds(self.lower * factor, self.upper * factor, unit)

    # ------------------------------------------------------ conversions
    def to_pixels(self, spacing: Sequence[float] | None = None) -> SizeBounds:
        """The bounds in grid units: ``px`` for areas, ``vox`` for volumes.

        Parameters
        ----------
        spacing : (sx, sy) or (sx, sy, sz), mm
            Needed for ``mm2`` (uses ``sx * sy``) and ``mm3`` (``sx * sy * sz``).
        """
        if self.unit in ("px", "vox"):
            return self
        if self.unit == "mm2":
            sx, sy = _spacing(spacing, 2, "converting mm2 bounds to px")
            return self._times(1.0 / (sx * sy), "px")
        sx, sy, sz = _spacing(spacing, 3, "converting mm3 bounds to vox")
        return self._times(1.0 / (sx * sy * sz), "vox")

    def to_mm2(self, spacing: Sequence[float] | None = None) -> SizeBounds:
        """Per-slice bounds in mm^2 (``px`` x ``sx * sy``)."""
        if not self.is_area:
            raise BoundsError(f"cannot express volume bounds ({self.unit}) as a slice area in mm2")
        if self.unit == "mm2":
            return self
        sx, sy = _spacing(spacing, 2, "converting px bounds to mm2")
        return self._times(sx * sy, "mm2")

    def to_mm3(self, spacing: Sequence[float] | None = None) -> SizeBounds:
        """Per-volume bounds in mm^3 (``vox`` x ``sx * sy * sz``)."""
        if not self.is_volume:
            raise BoundsError(f"cannot express slice-area bounds ({self.unit}) as a volume in mm3")
        if self.unit == "mm3":
            return self
        sx, sy, sz = _spacing(spacing, 3, "converting vox bounds to mm3")
        return self._times(sx * sy * sz, "mm3")

    def to_unit(self, unit: str, spacing: Sequence[float] | None = None) -> SizeBounds:
        """The bounds in ``unit`` (``px``, ``mm2``, ``vox``, ``mm3`` or ``ml`` -> ``mm3``).

        Raises
        ------
        BoundsError
            Unknown unit, area <-> volume, or a conversion that needs
            ``spacing`` when it is None.
        """
        if isinstance(unit, str) and unit.lower() == "ml":
            unit = "mm3"
        unit = _unit(unit)
        if unit == self.unit:
            return self
        if (unit in AREA_UNITS) != self.is_area:
            kind = "slice-area" if self.is_area else "volume"
            raise BoundsError(f"cannot convert {kind} bounds ({self.unit}) to {unit}")
        if unit in ("px", "vox"):
            return self.to_pixels(spacing)
        return self.to_mm2(spacing) if unit == "mm2" else self.to_mm3(spacing)

    def scaled(self, area_factor: float) -> SizeBounds:
        """Grid bounds on a resized image.

        Parameters
        ----------
        area_factor : float
            Ratio of new to old pixel (voxel) counts: ``f**2`` for an image
            resized by ``f`` along each in-plane axis.

        Raises
        ------
        BoundsError
            On a factor that is not finite and > 0, or on physical units (a
            size in mm^2 or mm^3 does not change when the grid does).
        """
        factor = _number(area_factor, "area factor")
        if factor <= 0:
            raise BoundsError(f"area factor must be > 0; got {factor}")
        if self.unit not in ("px", "vox"):
            raise BoundsError(f"{self.unit} bounds do not change when the image is resized; scale px or vox bounds")
        return self._times(factor, self.unit)

    def check_fits(self, image_shape: Sequence[int], spacing: Sequence[float] | None = None) -> None:
        """Refuse bounds whose upper bound is larger than the image can hold.

        Parameters
        ----------
        image_shape : (X, Y) for area bounds, (X, Y, Z) for volume bounds
            Extra trailing entries are ignored.
        spacing : (sx, sy[, sz]), mm, optional
            Needed for ``mm2`` / ``mm3`` bounds.

        Raises
        ------
        BoundsError
            ``"upper bound 70000 px exceeds the slice area 65536 px"``.
        """
        grid = self.to_pixels(spacing)
        dims = 2 if self.is_area else 3
        shape = tuple(int(n) for n in image_shape)
        if len(shape) < dims:
            raise BoundsError(f"image shape {shape} has fewer than {dims} axes for {self.unit} bounds")
        capacity = float(np.prod(shape[:dims]))
        if grid.upper > capacity * (1 + 1e-9):  # tolerate round-off of unit conversions
            where = "the slice area" if self.is_area else "the volume"
            said = f"{_fmt(self.upper)} {_PRINTED[self.unit]}"
            if grid is not self:
                said += f" ({_fmt(grid.upper)} {grid.unit})"
            raise BoundsError(f"upper bound {said} exceeds {where} {_fmt(capacity)} {grid.unit}")

    # ------------------------------------------------------- plain values
    def as_dict(self) -> dict[str, Any]:
        """``{"lower": float, "upper": float, "unit": str}`` (for checkpoints)."""
        return {"lower": float(self.lower), "upper": float(self.upper), "unit": str(self.unit)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SizeBounds:
        """Inverse of :meth:`as_dict`; ``unit`` defaults to ``"px"``."""
        if not isinstance(data, dict):
            raise BoundsError(f"size bounds must be a dict with lower, upper and unit; got {type(data).__name__}")
        missing = [key for key in ("lower", "upper") if key not in data]
        if missing:
            raise BoundsError(f"size bounds {data!r} lack {', '.join(missing)}")
        extra = sorted(set(data) - {"lower", "upper", "unit"})
        if extra:
            raise BoundsError(f"size bounds {data!r} have unknown keys {', '.join(map(str, extra))}")
        return cls(data["lower"], data["upper"], data.get("unit", "px"))

    # ------------------------------------------------------------ display
    def describe(self, spacing: Sequence[float] | None = None) -> str:
        """``"98-1723 px (151.9-2670.7 mm^2)"``: the bounds, and with a spacing in the other unit too."""
        text = f"{_fmt(self.lower)}-{_fmt(self.upper)} {_PRINTED[self.unit]}"
        if spacing is None:
            return text
        if self.unit == "px":
            other = self.to_mm2(spacing)
        elif self.unit == "vox":
            other = self.to_mm3(spacing)
        else:
            other = self.to_pixels(spacing)
        return f"{text} ({other.lower:.1f}-{other.upper:.1f} {_PRINTED[other.unit]})"

    def __str__(self) -> str:
        return self.describe()


# -------------------------------------------------------------- the recipe
def _label_mask(labels: np.ndarray, label: int) -> np.ndarray:
    """``labels == label`` as a bool ``(X, Y, Z, T)`` array."""
    labels = np.asarray(labels)
    if not 2 <= labels.ndim <= 4:
        raise BoundsError(f"labels must be (X, Y), (X, Y, Z) or (X, Y, Z, T); got shape {labels.shape}")
    mask = labels == label
    return mask.reshape(mask.shape + (1,) * (4 - mask.ndim))


def annotation_sizes(labels: np.ndarray, label: int) -> np.ndarray:
    """Area of ``label`` in every slice of every frame.

    Parameters
    ----------
    labels : ndarray, integer, ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)``
        A label volume (e.g. a full manual segmentation).
    label : int
        The target's label value.

    Returns
    -------
    ndarray, int64, ``(Z, T)``
        Pixel counts; ``Z = T = 1`` for a 2D input, ``T = 1`` for 3D.
    """
    return _label_mask(labels, label).sum(axis=(0, 1), dtype=np.int64)


def bounds_from_annotation(
    labels: np.ndarray,
    label: int,
    spacing: Sequence[float] | None = None,
    lower_factor: float = 1.1,
    upper_factor: float = 0.9,
) -> SizeBounds:
    """Per-slice bounds from one annotated subject: the paper's recipe.

    ``lower = lower_factor x`` the smallest and ``upper = upper_factor x``
    the largest area of ``label`` over the slices where it occurs (every
    ``z`` of every ``t``; empty slices are ignored).

    Parameters
    ----------
    labels : ndarray, integer, ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)``
        The annotation.
    label : int
        The target's label value (3 = LV cavity in ACDC).
    spacing : (sx, sy[, sz]), mm, optional
        Validated if given; the result is in pixels of ``labels``' grid
        either way (convert with :meth:`SizeBounds.to_mm2`).
    lower_factor, upper_factor : float
        The paper's 1.1 and 0.9.

    Returns
    -------
    SizeBounds
        In ``"px"``.

    Raises
    ------
    BoundsError
        ``label`` does not occur, a factor is not finite and > 0, or the
        factors put the lower bound above the upper one (slices of nearly
        equal size).
    """
    lower_factor = _number(lower_factor, "lower factor")
    upper_factor = _number(upper_factor, "upper factor")
    if lower_factor <= 0 or upper_factor <= 0:
        raise BoundsError(f"bound factors must be > 0; got lower {lower_factor}, upper {upper_factor}")
    if spacing is not None:
        _spacing(spacing, 2, "the annotation")
    sizes = annotation_sizes(labels, label)
    present = sizes[sizes > 0]
    if present.size == 0:
        raise BoundsError(f"label {label} does not occur in the annotation")
    smallest, largest = int(present.min()), int(present.max())
    lower, upper = lower_factor * smallest, upper_factor * largest
    if lower > upper:
        raise BoundsError(
            f"label {label}: {lower_factor:g} x smallest slice area {smallest} px = {_fmt(lower)} px is above "
            f"{upper_factor:g} x largest {largest} px = {_fmt(upper)} px; the slices are too alike in size "
            "for these factors"
        )
    return SizeBounds(lower, upper, "px")


# ---------------------------------------------------------- per-slice table
def _slice_name(index: tuple[int, ...]) -> str:
    """``"z=3, t=0"`` for a ``(Z, T)`` index, ``"z=3"`` for ``(Z,)``."""
    names = ("z", "t") if len(index) <= 2 else tuple(f"axis{i}" for i in range(len(index)))
    return ", ".join(f"{n}={i}" for n, i in zip(names, index))


def slice_bounds(
    bounds_px: SizeBounds,
    present: np.ndarray,
    absent: np.ndarray,
    one_bound: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice lower and upper bounds from the slice tags.

    ===================  ==================  ==========================
    slice                lower               upper
    ===================  ==================  ==========================
    present              ``bounds.lower``    ``bounds.upper``
    present, one_bound   0                   ``bounds.upper``
    absent               0                   0  (suppression)
    neither              0                   ``bounds.upper``
    ===================  ==================  ==========================

    Parameters
    ----------
    bounds_px : SizeBounds
        Per-slice bounds in ``"px"``.
    present : ndarray, bool, ``(Z, T)``
        Slices known to contain the target (e.g. they carry target dots).
    absent : ndarray, bool, ``(Z, T)``
        Slices tagged target-absent.
    one_bound : bool, default False
        The paper's "one bound" runs: present slices get ``[0, upper]``.

    Returns
    -------
    lower, upper : ndarray, float32, ``(Z, T)``
        In pixels.

    Raises
    ------
    BoundsError
        Bounds not in px, shapes that differ, or a slice both present and absent.
    """
    if not isinstance(bounds_px, SizeBounds):
        raise BoundsError(f"slice_bounds needs a SizeBounds; got {type(bounds_px).__name__}")
    if bounds_px.unit != "px":
        raise BoundsError(f"slice_bounds needs bounds in px; got {bounds_px.unit} (convert with to_pixels(spacing))")
    present = np.asarray(present, dtype=bool)
    absent = np.asarray(absent, dtype=bool)
    if present.shape != absent.shape:
        raise BoundsError(f"present tags {present.shape} and absent tags {absent.shape} differ in shape")
    both = present & absent
    if both.any():
        index = tuple(int(i) for i in np.argwhere(both)[0])
        raise BoundsError(f"slice {_slice_name(index)} has target dots but is tagged target-absent")
    lower = np.zeros(present.shape, dtype=np.float32)
    upper = np.full(present.shape, bounds_px.upper, dtype=np.float32)
    if not one_bound:
        lower[present] = bounds_px.lower
    upper[absent] = 0.0
    return lower, upper


def widen_to_admit(
    bounds: SizeBounds,
    areas_px: Sequence[float] | np.ndarray,
    spacing: Sequence[float] | None = None,
) -> SizeBounds:
    """The smallest widening of ``bounds`` that holds every non-zero area of ``areas_px``.

    A slice the user drew in full (a correction) gives the target's true area
    there. Bounds that leave it out are wrong for this image: with the
    paper's one-subject recipe (upper = 0.9 x the *other* subject's largest
    slice) the largest basal slices of a bigger heart are above the upper
    bound, and every untouched slice like them keeps being pushed smaller
    than the correction the network is fitting. Raising the upper bound to
    the largest corrected area (and lowering the lower bound to the smallest
    non-zero one) removes that contradiction and nothing more.

    Parameters
    ----------
    bounds : SizeBounds
        Per-slice (area) bounds, ``px`` or ``mm2``.
    areas_px : sequence of float
        Corrected slices' target areas in pixels. Zeros (a slice drawn
        empty: the target is absent there) do not move the lower bound,
        which applies only to slices with the target.
    spacing : (sx, sy), mm, optional
        Needed when ``bounds`` are in ``mm2``.

    Returns
    -------
    SizeBounds
        In ``bounds.unit``; ``bounds`` itself when every area already fits.

    Raises
    ------
    BoundsError
        Volume bounds, an area that is negative or not finite, or ``mm2``
        bounds without ``spacing``.
    """
    if not isinstance(bounds, SizeBounds):
        raise BoundsError(f"widen_to_admit needs a SizeBounds; got {type(bounds).__name__}")
    if not bounds.is_area:
        raise BoundsError(f"corrected slice areas cannot widen volume bounds ({bounds.unit})")
    areas = np.asarray(areas_px, dtype=float).ravel()
    if areas.size and not (np.isfinite(areas).all() and (areas >= 0).all()):
        raise BoundsError("corrected slice areas must be finite and >= 0")
    areas = areas[areas > 0]
    if areas.size == 0:
        return bounds
    px = bounds.to_pixels(spacing)
    smallest, largest = float(areas.min()), float(areas.max())
    if smallest >= px.lower and largest <= px.upper:
        return bounds
    # a bound that does not move keeps its exact value: no unit round trip
    moved = SizeBounds(min(px.lower, smallest), max(px.upper, largest), "px").to_unit(bounds.unit, spacing)
    return SizeBounds(
        moved.lower if smallest < px.lower else bounds.lower,
        moved.upper if largest > px.upper else bounds.upper,
        bounds.unit,
    )
