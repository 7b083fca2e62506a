"""Turning one cine volume, its seeds and its constraints into training batches.

Everything here is numpy (and torch only for the final batch tensors). Arrays
are in the core's order, ``(X, Y, Z, T)``; a slice is ``(X, Y)``.

The trainer works on a *region of interest* (ROI): a box around the user's
target dots, grown by the largest radius a target within the upper bound can
have. Crops always contain the whole ROI, so a per-slice size bound in pixels
means the same thing on the crop as on the full slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .weak_labels import SEED_BACKGROUND, SEED_TARGET

#: Percentiles for robust per-volume min-max scaling.
NORMALISATION_PERCENTILES = (0.5, 99.5)


def as_4d(array: np.ndarray) -> np.ndarray:
    """View a (X, Y), (X, Y, Z) or (X, Y, Z, T) array as (X, Y, Z, T).

    Raises
    ------
    ValueError
        For arrays with fewer than 2 or more than 4 dimensions.
    """
    if array.ndim == 2:
        return array[:, :, None, None]
    if array.ndim == 3:
        return array[:, :, :, None]
    if array.ndim == 4:
        return array
    raise ValueError(f"expected a 2D, 3D or 4D array (X, Y[, Z[, T]]), got shape {array.shape}")


def from_4d(array: np.ndarray, ndim: int) -> np.ndarray:
    """Inverse of :func:`as_4d` for an original number of dimensions ``ndim``."""
    if ndim == 2:
        return array[:, :, 0, 0]
    if ndim == 3:
        return array[:, :, :, 0]
    return array


def normalisation_params(image: np.ndarray) -> dict[str, float]:
    """Robust intensity range of a whole volume.

    Parameters
    ----------
    image : ndarray, any shape
        Raw intensities (any unit).

    Returns
    -------
    dict
        ``{"low": p0.5, "high": p99.5}``: the intensities mapped to 0 and 1.
    """
    image = np.asarray(image)
    low = high = None
    if image.size >= FAST_PERCENTILE_MIN_SIZE and image.dtype.kind == "f":
        flat = image.ravel(order="K")  # a view for the (transposed) layer arrays the widget passes
        if np.isfinite(flat.min()) and np.isfinite(flat.max()):  # no NaN, no inf: no masked copy needed
            low, high = (_tail_percentile(flat, q) for q in NORMALISATION_PERCENTILES)
    if low is None:
        finite = image[np.isfinite(image)]
        if finite.size == 0:
            raise ValueError("the image has no finite voxel")
        low, high = np.percentile(finite, NORMALISATION_PERCENTILES)
    if not high > low:
        high = low + 1.0
    return {"low": float(low), "high": float(high)}


#: Volumes of at least this many voxels take :func:`_tail_percentile` instead of ``np.percentile``.
FAST_PERCENTILE_MIN_SIZE = 2**20


def _tail_percentile(flat: np.ndarray, q: float) -> float:
    """``np.percentile(flat, q)`` (linear interpolation) for a large finite 1D array, without sorting it.

    ``np.percentile`` partitions a copy of the whole volume: 0.6-0.9 s for a
    256x256x10x25 cine on 2 CPU cores, paid at every Train press and
    prediction. Here a sorted sample (about 2**18 values) brackets the two
    order statistics needed between two values; a pass counts the voxels
    below the bracket and another gathers those inside it, and only that
    window is partitioned (40-80 ms in all for both percentiles). The result
    is the same order statistics interpolated the same way, equal to
    ``np.percentile`` up to float rounding; when the bracket misses (it
    cannot for a sample this size but is checked) ``np.percentile`` runs.
    """
    n = flat.size
    rank = q / 100.0 * (n - 1)
    k = int(np.floor(rank))
    k1 = min(k + 1, n - 1)
    sample = np.sort(flat[:: max(1, n // 2**18)])
    m = sample.size
    centre = rank / (n - 1) * (m - 1)
    margin = 6.0 * np.sqrt(m) + 16.0  # sample ranks: many standard deviations of the rank's sampling error
    lo_v = sample[max(0, int(np.floor(centre - margin)))]
    hi_v = sample[min(m - 1, int(np.ceil(centre + margin)))]
    below = int(np.count_nonzero(flat < lo_v))
    if lo_v == hi_v:  # a tie (say, a zero background) spans the bracket
        inside = int(np.count_nonzero(flat == lo_v))
        if below <= k and below + inside > k1:
            return float(lo_v)
    else:
        window = flat[(flat >= lo_v) & (flat <= hi_v)]
        if below <= k and below + window.size > k1:
            part = np.partition(window, [k - below, k1 - below])
            a, b = float(part[k - below]), float(part[k1 - below])
            return a + (b - a) * (rank - k)
    return float(np.percentile(flat, q))


def normalise(image: np.ndarray, params: dict[str, float], out: np.ndarray | None = None) -> np.ndarray:
    """Scale intensities to about [0, 1] with ``params`` from :func:`normalisation_params`.

    Values outside the percentile range are clipped to [-0.5, 1.5] so that a
    few hot voxels cannot dominate. ``out``: a float32 array of ``image``'s
    shape to write into (it may be ``image`` itself); the same values either way.
    """
    if out is None:
        scaled = (np.asarray(image, dtype=np.float32) - params["low"]) / (params["high"] - params["low"])
        return np.clip(scaled, -0.5, 1.5).astype(np.float32, copy=False)
    if out.dtype != np.float32 or out.shape != np.shape(image):
        raise ValueError(f"out must be float32 of shape {np.shape(image)}, got {out.dtype} {out.shape}")
    if out is not image:
        out[...] = image  # float32 first, as without out
    np.subtract(out, np.float32(params["low"]), out=out)
    np.divide(out, np.float32(params["high"] - params["low"]), out=out)
    return np.clip(out, -0.5, 1.5, out=out)


@dataclass(frozen=True)
class Box:
    """An in-plane box ``[x0, x1) x [y0, y1)`` in pixels of the (X, Y) grid."""

    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.x1 - self.x0, self.y1 - self.y0)

    def as_list(self) -> list[int]:
        return [self.x0, self.x1, self.y0, self.y1]

    @classmethod
    def from_list(cls, values) -> "Box":
        x0, x1, y0, y1 = (int(v) for v in values)
        return cls(x0, x1, y0, y1)


def _round_up(value: int, multiple: int) -> int:
    return int(-(-value // multiple) * multiple)


def region_of_interest(
    seeds: np.ndarray,
    upper_px: float,
    min_side: int = 0,
    multiple: int = 8,
) -> Box:
    """The box around the target dots that any plausible target lies in.

    Parameters
    ----------
    seeds : ndarray uint8 (X, Y, Z, T)
        Seed codes; only target dots (1) and full correction masks count.
    upper_px : float
        Upper bound on the target's area per slice, in pixels. A target of that
        area can reach ``sqrt(upper / pi)`` pixels beyond a dot if it is a disc;
        the box grows by 1.5 times that radius plus 8 pixels for context.
    min_side : int
        Smallest side of the box in pixels (grown symmetrically).
    multiple : int
        Sides are rounded up to a multiple of this (the network's stride).

    Returns
    -------
    Box
        May extend beyond the image; crops pad there.
    """
    xs, ys = np.nonzero((seeds == SEED_TARGET).any(axis=(2, 3)))
    if xs.size == 0:
        raise ValueError("no target dots: click at least one dot inside the target")
    reach = int(np.ceil(1.5 * np.sqrt(max(upper_px, 1.0) / np.pi))) + 8
    x0, x1 = int(xs.min()) - reach, int(xs.max()) + 1 + reach
    y0, y1 = int(ys.min()) - reach, int(ys.max()) + 1 + reach
    boxes = []
    for lo, hi in ((x0, x1), (y0, y1)):
        side = _round_up(max(hi - lo, min_side), multiple)
        extra = side - (hi - lo)
        lo -= extra // 2
        boxes.append((lo, lo + side))
    (x0, x1), (y0, y1) = boxes
    return Box(x0, x1, y0, y1)


def crop_slice(array2d: np.ndarray, box: Box, fill: float = 0.0) -> np.ndarray:
    """Crop (X, Y) ``array2d`` to ``box``, padding with ``fill`` outside the image."""
    out = np.full(box.shape, fill, dtype=array2d.dtype)
    sx0, sx1 = max(box.x0, 0), min(box.x1, array2d.shape[0])
    sy0, sy1 = max(box.y0, 0), min(box.y1, array2d.shape[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0 - box.x0 : sx1 - box.x0, sy0 - box.y0 : sy1 - box.y0] = array2d[sx0:sx1, sy0:sy1]
    return out


def crop_volume(array4d: np.ndarray, box: Box, fill: float = 0.0) -> np.ndarray:
    """Crop the in-plane axes of (X, Y, ...) ``array4d`` to ``box`` (padding outside)."""
    out = np.full(box.shape + array4d.shape[2:], fill, dtype=array4d.dtype)
    sx0, sx1 = max(box.x0, 0), min(box.x1, array4d.shape[0])
    sy0, sy1 = max(box.y0, 0), min(box.y1, array4d.shape[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0 - box.x0 : sx1 - box.x0, sy0 - box.y0 : sy1 - box.y0] = array4d[sx0:sx1, sy0:sy1]
    return out


def uncrop_volume(cropped: np.ndarray, box: Box, shape_xy: tuple[int, int]) -> np.ndarray:
    """Place (h, w, ...) ``cropped`` back into a zero array of in-plane shape ``shape_xy``."""
    out = np.zeros(tuple(shape_xy) + cropped.shape[2:], dtype=cropped.dtype)
    sx0, sx1 = max(box.x0, 0), min(box.x1, shape_xy[0])
    sy0, sy1 = max(box.y0, 0), min(box.y1, shape_xy[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0:sx1, sy0:sy1] = cropped[sx0 - box.x0 : sx1 - box.x0, sy0 - box.y0 : sy1 - box.y0]
    return out


def slice_targets(seeds2d: np.ndarray, correction2d: np.ndarray | None) -> np.ndarray:
    """Class targets for one slice: 1 target, 0 background, -1 unlabelled.

    A corrected slice (``correction2d`` not None, 0/1) is fully labelled.
    """
    if correction2d is not None:
        return (correction2d > 0).astype(np.int64)
    targets = np.full(seeds2d.shape, -1, dtype=np.int64)
    targets[seeds2d == SEED_TARGET] = 1
    targets[seeds2d == SEED_BACKGROUND] = 0
    return targets


def augment_pair(
    image: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, 90-degree rotations (square crops) and intensity jitter.

    All are area-preserving, so size bounds in pixels hold unchanged.

    Parameters
    ----------
    image : ndarray float32 (h, w)
    targets : ndarray int64 (h, w)
    """
    if rng.random() < 0.5:
        image, targets = image[::-1], targets[::-1]
    if rng.random() < 0.5:
        image, targets = image[:, ::-1], targets[:, ::-1]
    if image.shape[0] == image.shape[1]:
        k = int(rng.integers(4))
        image, targets = np.rot90(image, k), np.rot90(targets, k)
    gamma = float(np.exp(rng.uniform(-0.25, 0.25)))
    contrast = float(rng.uniform(0.9, 1.1))
    shift = float(rng.uniform(-0.05, 0.05))
    image = np.clip(image, 0.0, None) ** gamma * contrast + shift
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(targets)
