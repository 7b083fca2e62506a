"""Weak labels: seed codes, the paper's eroded labels, simulated user clicks.

Seeds (user dots) are a ``uint8`` array of the image's shape ``(X, Y[, Z[, T]])``:

* ``SEED_UNLABELLED = 0``: no information;
* ``SEED_TARGET = 1``: a dot inside the target;
* ``SEED_BACKGROUND = 2``: a dot outside it.

``erosion_weak_labels`` builds the paper's weak labels from a full mask (a
small blob deep inside the target of every slice); ``click_seeds`` simulates a
user who clicks a few small dots inside the target on chosen slices and
frames; ``validate_seeds`` checks a user's seeds before training.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage as ndi

SEED_UNLABELLED = 0
SEED_TARGET = 1
SEED_BACKGROUND = 2

_SEED_CODES = (SEED_UNLABELLED, SEED_TARGET, SEED_BACKGROUND)


class SeedsError(ValueError):
    """The seeds (user dots) cannot be used: wrong shape, unknown codes, or no target dot."""


# ------------------------------------------------------------------ helpers
def _as_slices(array: np.ndarray) -> np.ndarray:
    """View ``(X, Y, ...)`` as ``(X, Y, N)``: one 2D slice per trailing index."""
    if array.ndim < 2:
        raise ValueError(f"expected an array of at least 2 dimensions (X, Y, ...); got shape {array.shape}")
    return array.reshape(array.shape[0], array.shape[1], -1)


def _as_4d(array: np.ndarray) -> np.ndarray:
    """View ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)`` as ``(X, Y, Z, T)``."""
    if not 2 <= array.ndim <= 4:
        raise ValueError(f"expected a mask of shape (X, Y), (X, Y, Z) or (X, Y, Z, T); got shape {array.shape}")
    return array.reshape(array.shape + (1,) * (4 - array.ndim))


def _depth(mask2d: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) from each pixel of ``mask2d`` to the nearest pixel outside it.

    Pixels beyond the image border count as outside.
    """
    padded = np.pad(mask2d, 1, constant_values=False)
    return ndi.distance_transform_edt(padded)[1:-1, 1:-1]


def _disk_offsets(radius: int) -> np.ndarray:
    """Integer offsets ``(n, 2)`` of a disc of ``radius`` px: ``dx^2 + dy^2 <= radius^2``."""
    r = int(radius)
    dx, dy = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dx * dx + dy * dy <= r * r
    return np.stack([dx[keep], dy[keep]], axis=1)


# ------------------------------------------------------------- weak labels
def erosion_weak_labels(mask: np.ndarray, iterations: int = 10) -> np.ndarray:
    """The paper's weak labels: each 2D slice of ``mask`` eroded ``iterations`` times by a 3x3 square.

    The erosion is equivalent to one with a ``(2 * iterations + 1)`` square
    kernel (pixels outside the image count as background). Where a slice's
    target would vanish, fewer iterations are used, the most that leave
    something (at least one pixel); empty slices stay empty.

    Parameters
    ----------
    mask : np.ndarray
        bool ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)``: the full target
        mask; slices are taken over the first two axes.
    iterations : int
        Erosions of the 3x3 square (the reference uses 10).

    Returns
    -------
    np.ndarray
        bool, ``mask``'s shape: a subset of ``mask``, non-empty in exactly its
        non-empty slices.
    """
    if iterations < 0:
        raise ValueError(f"erosion iterations must be >= 0; got {iterations}")
    mask = np.asarray(mask).astype(bool)
    slices = _as_slices(mask)
    out = np.zeros_like(slices)
    for n in range(slices.shape[2]):
        sl = slices[:, :, n]
        if not sl.any():
            continue
        # chessboard distance d: a pixel survives k erosions by the 3x3 square iff d > k
        depth = ndi.distance_transform_cdt(np.pad(sl, 1), metric="chessboard")[1:-1, 1:-1]
        k = min(int(iterations), int(depth.max()) - 1)
        out[:, :, n] = depth > k
    return out.reshape(mask.shape)


# ------------------------------------------------------------------- clicks
def _pick_centres(candidates: np.ndarray, k: int, spacing: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``k`` random rows of ``candidates`` ``(n, 2)``, pairwise at least ``spacing`` px apart."""
    chosen: list[np.ndarray] = []
    pool = candidates
    while len(chosen) < k and len(pool):
        centre = pool[rng.integers(len(pool))]
        chosen.append(centre)
        d2 = ((pool - centre) ** 2).sum(axis=1)
        pool = pool[d2 >= spacing * spacing]
    return chosen


def _stamp(seeds2d: np.ndarray, centres, offsets: np.ndarray, allowed: np.ndarray, code: int) -> None:
    """Write discs (``offsets`` around each centre) into ``seeds2d``, only where ``allowed``."""
    for centre in centres:
        pts = centre[None, :] + offsets
        inside = np.all((pts >= 0) & (pts < np.asarray(seeds2d.shape)), axis=1)
        pts = pts[inside]
        keep = allowed[pts[:, 0], pts[:, 1]]
        seeds2d[pts[keep, 0], pts[keep, 1]] = code


def _chosen(indices: Iterable[int] | int | None, size: int, what: str) -> list[int]:
    """Sorted unique indices in ``range(size)`` (negative ones count from the end); all when None."""
    if indices is None:
        return list(range(size))
    raw = [indices] if np.isscalar(indices) else list(indices)
    out = set()
    for i in raw:
        i = int(i)
        if not -size <= i < size:
            raise ValueError(f"{what} index {i} is out of range for {size} {what}s")
        out.add(i % size)
    return sorted(out)


def click_seeds(
    mask: np.ndarray,
    k: int = 3,
    radius: int = 1,
    slices: Iterable[int] | None = None,
    frames: Iterable[int] | None = None,
    rng: int | np.random.Generator | None = None,
    background_k: int = 0,
    background_margin: int = 5,
    background_within: float | None = None,
) -> np.ndarray:
    """Simulate a user who clicks ``k`` dots inside the target on chosen slices and frames.

    On each chosen slice ``(z, t)`` where the target is present, ``k`` discs
    of ``radius`` px are centred at random points at least ``radius + 1`` px
    (Euclidean, centre to centre) from the nearest pixel outside the mask, so
    every disc lies wholly inside; centres are at least ``2 * radius + 2`` px
    apart, so dots never touch (fewer than ``k`` when the target is too small
    for ``k`` separate dots). If no point is deep enough, one dot is centred at
    the deepest point and cut to the mask. ``background_k`` discs of
    ``SEED_BACKGROUND`` go at random points more than ``background_margin``
    px from the mask (also on chosen slices where the target is absent).

    Parameters
    ----------
    mask : np.ndarray
        bool ``(X, Y, Z, T)``, ``(X, Y, Z)`` or ``(X, Y)``: the target.
    k : int
        Target dots per slice.
    radius : int
        Dot radius in pixels (0: single pixels).
    slices, frames : iterable of int, optional
        z and t indices to click on; default every slice and frame (slices
        where the target is absent get no target dot).
    rng : int or np.random.Generator, optional
        Seed or generator (``np.random.default_rng(rng)``).
    background_k : int
        Background dots per slice.
    background_margin : int
        Minimum distance (px) from a background dot's centre to the mask;
        raised to ``radius + 1`` if smaller.
    background_within : float, optional
        Maximum distance (px) from a background dot's centre to the mask:
        dots on the tissue right around the target (the wall a network
        leaks into), where a user clicks background. None: anywhere.

    Returns
    -------
    np.ndarray
        uint8, ``mask``'s shape: ``SEED_TARGET`` dots (always inside the
        mask), ``SEED_BACKGROUND`` dots (always outside), 0 elsewhere.
    """
    if k < 0 or background_k < 0 or radius < 0:
        raise ValueError(
            f"click counts and radius must be >= 0; got k={k}, background_k={background_k}, radius={radius}"
        )
    if background_within is not None and not background_within > max(int(background_margin), int(radius) + 1):
        raise ValueError(
            f"background_within ({background_within}) must exceed the background margin "
            f"({max(int(background_margin), int(radius) + 1)} px)"
        )
    mask = np.asarray(mask).astype(bool)
    m4 = _as_4d(mask)
    _, _, Z, T = m4.shape
    if mask.ndim < 3 and slices is not None:
        raise ValueError("slices were given but the mask has no slice axis (shape (X, Y))")
    if mask.ndim < 4 and frames is not None:
        raise ValueError(f"frames were given but the mask has no time axis (shape {mask.shape})")
    zs = _chosen(slices, Z, "slice")
    ts = _chosen(frames, T, "frame")
    generator = np.random.default_rng(rng)
    offsets = _disk_offsets(radius)
    spacing = 2 * int(radius) + 2
    margin = max(int(background_margin), int(radius) + 1)

    seeds = np.zeros(m4.shape, dtype=np.uint8)
    for t in ts:
        for z in zs:
            target = m4[:, :, z, t]
            out = seeds[:, :, z, t]
            if target.any() and k > 0:
                depth = _depth(target)
                candidates = np.argwhere(depth >= radius + 1)
                if len(candidates):
                    centres = _pick_centres(candidates, k, spacing, generator)
                else:
                    centres = [np.array(np.unravel_index(np.argmax(depth), depth.shape))]
                _stamp(out, centres, offsets, target, SEED_TARGET)
            if background_k > 0:
                outside = ~target
                distance = ndi.distance_transform_edt(outside) if target.any() else np.full(target.shape, np.inf)
                near = distance > margin
                if background_within is not None and target.any():
                    near &= distance <= background_within
                candidates = np.argwhere(near)
                centres = _pick_centres(candidates, background_k, spacing, generator)
                _stamp(out, centres, offsets, outside, SEED_BACKGROUND)
    return seeds.reshape(mask.shape)


def dot_centres(seeds: np.ndarray, code: int = SEED_TARGET) -> np.ndarray:
    """Centres of the dots of one seed ``code``, one row per dot.

    A dot is a connected group of ``code`` pixels within one slice of one
    frame (dots on neighbouring slices are counted apart).

    Parameters
    ----------
    seeds : np.ndarray
        Seed codes ``(X, Y, Z, T)``.
    code : int
        ``SEED_TARGET`` or ``SEED_BACKGROUND``.

    Returns
    -------
    np.ndarray
        int ``(n, 4)``: rounded ``(x, y, z, t)`` of each dot's centroid.
    """
    seeds = np.asarray(seeds)
    if seeds.ndim != 4:
        raise ValueError(f"expected seeds of shape (X, Y, Z, T); got shape {seeds.shape}")
    rows = []
    for z, t in zip(*np.nonzero((seeds == code).any(axis=(0, 1)))):
        components, n = ndi.label(seeds[:, :, z, t] == code)
        if n:
            centres = np.asarray(ndi.center_of_mass(components > 0, components, range(1, n + 1)))
            for cx, cy in np.round(centres).astype(int):
                rows.append((cx, cy, int(z), int(t)))
    return np.asarray(rows, dtype=int).reshape(-1, 4)


# --------------------------------------------------------------- validation
def validate_seeds(seeds: np.ndarray, image_shape: tuple[int, ...]) -> None:
    """Check user seeds against the image before training.

    Parameters
    ----------
    seeds : np.ndarray
        Integer codes, the image's shape.
    image_shape : tuple of int
        Shape of the image, e.g. ``(X, Y, Z, T)``.

    Raises
    ------
    SeedsError
        If the shapes differ, a value is not one of 0, 1, 2, or there is no
        target dot at all.
    """
    seeds = np.asarray(seeds)
    if tuple(seeds.shape) != tuple(image_shape):
        raise SeedsError(f"seeds shape {tuple(seeds.shape)} does not match image shape {tuple(image_shape)}")
    if seeds.dtype.kind == "u" and seeds.size and seeds.max() <= max(_SEED_CODES):
        bad = None  # unsigned codes 0..2: valid, found in one pass without temporaries (the usual case)
    else:
        bad = ~np.isin(seeds, _SEED_CODES)
    if bad is not None and bad.any():
        values = np.unique(seeds[bad])
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise SeedsError(
            f"seed values must be 0 (unlabelled), 1 (target) or 2 (background); found {shown}"
        )
    if not (seeds == SEED_TARGET).any():
        raise SeedsError("no target dots: click at least one dot inside the target")


def seeded_slices(seeds: np.ndarray) -> np.ndarray:
    """Which slices hold a target dot.

    Parameters
    ----------
    seeds : np.ndarray
        ``(X, Y, Z, T)`` or ``(X, Y, Z)`` seed codes.

    Returns
    -------
    np.ndarray
        bool ``(Z, T)`` or ``(Z,)``: true where the slice has any
        ``SEED_TARGET`` pixel.
    """
    seeds = np.asarray(seeds)
    if seeds.ndim < 2:
        raise ValueError(f"expected seeds of shape (X, Y, ...); got shape {seeds.shape}")
    return (seeds == SEED_TARGET).any(axis=(0, 1))
