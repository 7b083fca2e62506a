"""Dice overlap of binary masks: whole arrays, per 2D slice, per 3D volume.

``Dice = 2 |P n G| / (|P| + |G|)``; two empty masks score 1 (nothing to find,
nothing found), as in the paper's evaluation. Arrays follow the core's axis
order ``(X, Y[, Z[, T]])``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice", "dice_2d", "dice_3d"]


def _binary_pair(pred: np.ndarray, gt: np.ndarray, label: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``gt`` as bool arrays: ``!= 0``, or ``== label`` when given."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}")
    if label is None:
        return pred != 0, gt != 0
    return pred == label, gt == label


def _dice_over(pred: np.ndarray, gt: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Dice of bool arrays reduced over ``axes``; 1 where both are empty."""
    inter = np.logical_and(pred, gt).sum(axis=axes, dtype=np.int64)
    total = pred.sum(axis=axes, dtype=np.int64) + gt.sum(axis=axes, dtype=np.int64)
    score = np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)
    return np.asarray(score, dtype=np.float64)


def dice(pred: np.ndarray, gt: np.ndarray, label: int | None = None) -> float:
    """Dice of two masks of any shape, over all their elements.

    Parameters
    ----------
    pred, gt : ndarray, bool or integer, same shape
        Foreground is ``!= 0``, or ``== label`` when ``label`` is given.
    label : int, optional
        Label value to compare in both arrays.

    Returns
    -------
    float
        In ``[0, 1]``; ``1.0`` when both masks are empty.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    p, g = _binary_pair(pred, gt, label)
    return float(_dice_over(p, g, tuple(range(p.ndim))))


def dice_2d(pred: np.ndarray, gt: np.ndarray, label: int | None = None) -> np.ndarray:
    """Dice of every 2D slice (over the ``(X, Y)`` plane).

    Parameters
    ----------
    pred, gt : ndarray, bool or integer, ``(X, Y[, Z[, T]])``, same shape
    label : int, optional
        Label value to compare in both arrays (default: ``!= 0``).

    Returns
    -------
    ndarray, float64, shape ``pred.shape[2:]``
        ``(Z,)`` or ``(Z, T)`` (0-d for a single slice); ``1`` for slices
        where both masks are empty.

    Raises
    ------
    ValueError
        If the shapes differ or have fewer than 2 axes.
    """
    p, g = _binary_pair(pred, gt, label)
    if p.ndim < 2:
        raise ValueError(f"dice_2d needs arrays of at least 2 axes (X, Y, ...); got shape {p.shape}")
    return _dice_over(p, g, (0, 1))


def dice_3d(pred: np.ndarray, gt: np.ndarray, label: int | None = None) -> float | np.ndarray:
    """Dice of the whole volume, per frame for cine data.

    Parameters
    ----------
    pred, gt : ndarray, bool or integer, ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, T)``
    label : int, optional
        Label value to compare in both arrays (default: ``!= 0``).

    Returns
    -------
    float or ndarray
        A float for 2D/3D input; float64 ``(T,)`` for 4D input, one score per
        frame over its ``(X, Y, Z)`` volume. ``1`` where both are empty.

    Raises
    ------
    ValueError
        If the shapes differ or do not have 2 to 4 axes.
    """
    p, g = _binary_pair(pred, gt, label)
    if not 2 <= p.ndim <= 4:
        raise ValueError(f"dice_3d needs (X, Y), (X, Y, Z) or (X, Y, Z, T) arrays; got shape {p.shape}")
    if p.ndim == 4:
        return _dice_over(p, g, (0, 1, 2))
    return float(_dice_over(p, g, tuple(range(p.ndim))))
