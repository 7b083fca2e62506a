"""Test-time augmentation: a prediction averaged over the flips and rotations training saw.

The trainer augments every crop with flips and 90-degree rotations
(:func:`~napari_sizeloss.data.augment_pair`), so the network has learnt the
target in every one of those orientations; its errors are not quite the same
in each. Predicting each slice in several orientations, turning each
prediction back and averaging the target probabilities (as nnU-Net's
mirroring does) evens some of those errors out. On 16 demo cases the 4
flips (the interactive default) raised the 3D Dice by 0.013 on average,
on 14 of them (``python scripts/tta_bench.py``, ``docs/benchmarks.md``),
at 4 times the forward passes.

Modes (:data:`TTA_MODES`):

``"none"``
    one forward pass per slice.
``"flips"``
    4 views: as is, flipped along X, along Y, along both (the default of
    :class:`~napari_sizeloss.config.TrainConfig` and ``Predictor``).
``"dihedral"``
    8 views: the 4 rotations by 90 degrees, each as is and flipped along Y
    (every symmetry of a square). On a non-square slice the odd rotations
    swap its sides and run as a second batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import TTA_MODES

__all__ = ["TTA_MODES", "check_tta", "tta_views", "views_per_pass", "tta_probabilities"]

#: A view: rotate by ``k`` quarter turns (in the (H, W) plane), then flip the dims given.
View = tuple[int, tuple[int, ...]]


def check_tta(mode: str) -> str:
    """``mode`` if it is one of :data:`TTA_MODES`, else a one-line ``ValueError``."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
    return mode


def tta_views(mode: str) -> list[View]:
    """The views of ``mode``, the identity first: ``(quarter turns, flipped dims)`` of an (N, C, H, W) batch."""
    check_tta(mode)
    if mode == "none":
        return [(0, ())]
    if mode == "flips":
        return [(0, ()), (0, (2,)), (0, (3,)), (0, (2, 3))]
    return [(k, flip) for k in range(4) for flip in ((), (3,))]


def views_per_pass(mode: str, square: bool = True) -> int:
    """How many views of a slice go through the network together (one shape per pass)."""
    views = tta_views(mode)
    if square:
        return len(views)
    return max(sum(k % 2 == 0 for k, _ in views), sum(k % 2 == 1 for k, _ in views))


def _apply(x: torch.Tensor, view: View) -> torch.Tensor:
    k, flip = view
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, flip) if flip else x


def _undo(y: torch.Tensor, view: View) -> torch.Tensor:
    k, flip = view
    if flip:
        y = torch.flip(y, flip)
    return torch.rot90(y, -k, dims=(2, 3)) if k else y


def tta_probabilities(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    mode: str = "none",
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Class probabilities of a batch, averaged over the views of ``mode``.

    Parameters
    ----------
    net : callable
        ``(N, 1, H, W) -> (N, C, H, W)`` logits (any float dtype; e.g. under autocast).
    x : tensor (N, 1, H, W)
    mode : one of :data:`TTA_MODES`
    prepare : callable, optional
        Applied to each pass's input batch before ``net`` (e.g. to lay it
        out channels-last).

    Returns
    -------
    tensor float32 (N, C, H, W)
        The softmax over classes, averaged over the views (each turned back
        to ``x``'s orientation). With ``"none"``: ``softmax(net(x))``.

    The views of one shape run as one batch of ``N * views`` slices; a
    non-square ``x`` under ``"dihedral"`` takes two passes.
    """
    views = tta_views(mode)
    n = x.shape[0]
    groups: dict[tuple[int, ...], list[View]] = {}
    for view in views:
        shape = tuple(x.shape[2:]) if view[0] % 2 == 0 else tuple(x.shape[2:][::-1])
        groups.setdefault(shape, []).append(view)
    total = None
    for group in groups.values():
        batch = torch.cat([_apply(x, v) for v in group]) if len(group) > 1 else _apply(x, group[0])
        if prepare is not None:
            batch = prepare(batch)
        probs = torch.softmax(net(batch).float(), dim=1)
        for i, view in enumerate(group):
            back = _undo(probs[i * n : (i + 1) * n], view)
            total = back if total is None else total + back
    return total if len(views) == 1 else total / len(views)
