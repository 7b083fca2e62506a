"""Keep the predicted regions that the user's dots anchor (torch-free).

The size penalty bounds how *much* the network predicts per slice, not
*where*: with an upper bound looser than the target (another subject's
bounds, say) nothing stops a second bright structure from being predicted
as well. On the cine phantom that is the descending aorta, a bright disc a
few centimetres from the left ventricle, on every slice and every frame: in
the demo case of seed 3, after the first Train round, it is a quarter of the
predicted volume, and removing it lifts the 3D Dice from 0.75 to 0.89
(``napari-sizeloss bench --cases 16`` reports every case's Dice with and
without this filter).

A region the user clicked into is the target; a region that no dot and no
corrected pixel touches, in any slice or frame it extends through, is not
what they asked for. :func:`keep_connected` keeps the first kind.
Connectivity is 8-neighbour within a slice and face-to-face between
neighbouring slices (z) and frames (t): the left-ventricle cavity overlaps
itself from slice to slice and from frame to frame, so one dot anchors the
cavity of the whole cine, while structures beside it stay separate.
"""

from __future__ import annotations

import numpy as np

__all__ = ["anchors_from", "connectivity_structure", "keep_connected", "split_by_anchors"]


def anchors_from(seeds: np.ndarray, corrections: np.ndarray | None = None,
                 corrected: np.ndarray | None = None) -> np.ndarray:
    """Where the user said "target", bool (X, Y, Z, T): target dots and corrected target pixels.

    ``seeds`` uint8 (X, Y, Z, T) seed codes; ``corrections`` (X, Y, Z, T),
    non-zero target, counts only on the slices ``corrected`` (bool (Z, T)) marks.
    """
    from .weak_labels import SEED_TARGET

    anchors = np.asarray(seeds) == SEED_TARGET
    if corrections is not None and corrected is not None:
        anchors |= (np.asarray(corrections) > 0) & np.asarray(corrected, dtype=bool)[None, None]
    return anchors


def connectivity_structure(ndim: int) -> np.ndarray:
    """The neighbourhood :func:`keep_connected` links pixels with, bool ``(3,) * ndim``.

    Axes 0 and 1 (X, Y) are 8-connected; every further axis (Z, T) links a
    pixel to the same ``(x, y)`` in the neighbouring slice or frame only.
    """
    if ndim < 2:
        raise ValueError(f"a mask has at least 2 dimensions (X, Y), got {ndim}")
    structure = np.zeros((3,) * ndim, dtype=bool)
    centre = (1,) * (ndim - 2)
    structure[(slice(None), slice(None)) + centre] = True
    for axis in range(2, ndim):
        for side in (0, 2):
            index = [1] * ndim
            index[axis] = side
            structure[tuple(index)] = True
    return structure


def split_by_anchors(mask: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Split ``mask`` into the regions ``anchors`` touch and the others.

    Parameters
    ----------
    mask : ndarray (X, Y[, Z[, T]])
        The prediction; non-zero is target.
    anchors : ndarray, the same shape
        Non-zero where the user said "target": target dots, corrected target pixels.

    Returns
    -------
    kept, removed : ndarray bool, ``mask``'s shape
        ``kept | removed`` is ``mask > 0``. When no anchor lies on a
        predicted pixel, nothing anchors anything: ``kept`` is the whole mask.
    n_removed : int
        Number of regions in ``removed``.
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask)
    anchors = np.asarray(anchors)
    if mask.shape != anchors.shape:
        raise ValueError(f"anchors shape {anchors.shape} does not match the mask's {mask.shape}")
    predicted = mask > 0
    empty = np.zeros(predicted.shape, dtype=bool)
    hit = predicted & (anchors > 0)
    if not hit.any():
        return predicted, empty, 0
    # label only the box around the prediction (the trainer predicts inside its region of interest)
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in _nonzero_span(predicted))
    labels, n = ndi.label(predicted[box], structure=connectivity_structure(predicted.ndim))
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[hit[box]])] = True
    keep[0] = False
    kept = empty.copy()
    kept[box] = keep[labels]
    removed = predicted & ~kept
    return kept, removed, int(n - np.count_nonzero(keep))


def keep_connected(mask: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``mask`` without the regions that no anchor touches, bool, ``mask``'s shape.

    See :func:`split_by_anchors`; a mask no anchor touches is returned whole.
    """
    return split_by_anchors(mask, anchors)[0]


def _nonzero_span(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis, the indices where ``mask`` has a non-zero (``mask`` has at least one)."""
    spans = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        spans.append(np.flatnonzero(mask.any(axis=other)))
    return spans
