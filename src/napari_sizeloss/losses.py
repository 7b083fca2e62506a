"""Losses of size-constrained weakly supervised segmentation (pure torch).

The paper (Kervadec et al., "Constrained-CNN losses for weakly supervised
segmentation") trains on

    H(Y, S) + C(S)

where ``H`` is the cross-entropy on the few labelled pixels (the user's dots)
and ``C`` is a quadratic penalty on the *soft size* ``sum_p S_p`` of the
predicted target region when it leaves ``[a, b]`` (eq. 3). The follow-up
paper (Kervadec et al. 2019, "Constrained deep networks: Lagrangian
optimization via log-barrier extensions") replaces the quadratic by an
extended log-barrier; both are here.

Conventions
-----------
- ``logits`` and ``probs`` are ``(B, C, H, W)``: batch of 2D slices, class
  channel second (``H = X``, ``W = Y`` of the core's ``(X, Y)`` slices).
- Sizes are in pixels of the tensor's grid.
- ``targets`` are int64 ``(B, H, W)`` class indices with ``IGNORE_INDEX``
  (-1) for unlabelled pixels; :func:`seeds_to_targets` builds them from seed
  codes.
- Every penalty is returned *un-reduced* and *un-normalised*: the caller
  chooses the reduction, the normalisation (e.g. ``/ (H * W)``) and the
  weight.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .weak_labels import SEED_BACKGROUND, SEED_TARGET, SEED_UNLABELLED, SeedsError

__all__ = [
    "IGNORE_INDEX",
    "seeds_to_targets",
    "partial_cross_entropy",
    "check_target_range",
    "soft_size",
    "size_penalty",
    "log_barrier",
    "log_barrier_penalty",
    "volume_size_penalty",
    "volume_log_barrier_penalty",
]

#: Class target of an unlabelled pixel.
IGNORE_INDEX = -1


# ------------------------------------------------------------------ targets
def seeds_to_targets(seeds: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Turn seed codes into class targets for :func:`partial_cross_entropy`.

    Parameters
    ----------
    seeds : Tensor or ndarray, integer, any shape (usually ``(B, H, W)``)
        ``0`` unlabelled, ``1`` target dot, ``2`` background dot.

    Returns
    -------
    Tensor, int64, same shape and device
        ``1`` for target dots, ``0`` for background dots, ``IGNORE_INDEX``
        (-1) for unlabelled pixels.

    Raises
    ------
    SeedsError
        If ``seeds`` is not integer or holds a code other than 0, 1, 2.
    """
    seeds = torch.as_tensor(seeds)
    if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
        raise SeedsError(f"seeds must hold integer codes 0, 1, 2; got dtype {seeds.dtype}")
    codes = seeds.to(torch.int64)
    known = (codes == SEED_UNLABELLED) | (codes == SEED_TARGET) | (codes == SEED_BACKGROUND)
    if not bool(known.all()):
        bad = int(codes[~known].flatten()[0])
        raise SeedsError(f"seeds hold code {bad}; only 0 (none), 1 (target) and 2 (background) are allowed")
    targets = torch.full_like(codes, IGNORE_INDEX)
    targets[codes == SEED_TARGET] = 1
    targets[codes == SEED_BACKGROUND] = 0
    return targets


# ------------------------------------------------------------ cross-entropy
def check_target_range(targets: torch.Tensor | np.ndarray, n_classes: int) -> None:
    """Raise ValueError unless every target lies in ``[IGNORE_INDEX, n_classes)``.

    One reduction read back to the host: free for host arrays, one wait for
    the device for a GPU tensor.
    """
    if isinstance(targets, np.ndarray):
        if not targets.size:
            return
        low, high = int(targets.min()), int(targets.max())
    else:
        if not targets.numel():
            return
        low, high = (int(v) for v in torch.stack(torch.aminmax(targets.to(torch.int64))).cpu())
    if low < IGNORE_INDEX or high >= n_classes:
        raise ValueError(
            f"targets must lie in [{IGNORE_INDEX}, {n_classes - 1}] for {n_classes} classes; "
            f"got values in [{low}, {high}]"
        )


def partial_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """Cross-entropy on the labelled pixels only, one mean over the batch.

    ``sum_p w_p * (-log softmax(logits)_p[y_p]) / sum_p w_p`` over the
    labelled pixels ``p`` (``targets != IGNORE_INDEX``) of the whole batch,
    with ``w = 1`` unless ``weight`` is given. Every labelled class is
    supervised (target dots and background dots alike). Computed from the
    logits with ``log_softmax`` (stable for large logits).

    Parameters
    ----------
    logits : Tensor, float, ``(B, C, H, W)``
        Network outputs before softmax. Half precision is computed in float32.
    targets : Tensor, integer, ``(B, H, W)``
        Class index in ``[0, C)`` or ``IGNORE_INDEX`` (-1).
    weight : Tensor, float, ``(B, H, W)``, optional
        Non-negative per-pixel weight (e.g. to balance dots against the
        pixels of fully labelled correction slices). Weights of unlabelled
        pixels are ignored.
    check_targets : bool, default True
        Check that every target lies in ``[-1, C)``. On a GPU the check reads
        the targets' range back to the host, which waits for the device; a
        caller that has checked its targets on the host before sending them
        (the trainer does) passes False. An unchecked out-of-range target is
        undefined behaviour of ``gather``, so keep the default otherwise.

    Returns
    -------
    Tensor, float32 (or the logits' dtype if wider), scalar
        The weighted mean; an exact ``0`` (still connected to ``logits`` in
        the autograd graph, with zero gradient) when no pixel is labelled or
        the labelled weights sum to 0.

    Raises
    ------
    ValueError
        On shapes that do not match or a target outside ``[-1, C)``.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, C, H, W); got shape {tuple(logits.shape)}")
    B, C, H, W = logits.shape
    if tuple(targets.shape) != (B, H, W):
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits (B, H, W) = {(B, H, W)}")
    if weight is not None and tuple(weight.shape) != (B, H, W):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match logits (B, H, W) = {(B, H, W)}")
    if check_targets:
        check_target_range(targets, C)
    targets = targets.to(device=logits.device, dtype=torch.int64)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()

    labelled = targets != IGNORE_INDEX
    log_probs = F.log_softmax(logits, dim=1)
    picked = log_probs.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)  # (B, H, W)
    if weight is None:
        w = labelled.to(log_probs.dtype)
    else:
        w = torch.where(labelled, weight.to(device=log_probs.device, dtype=log_probs.dtype), 0.0)
    # torch.where (not a product) keeps unlabelled pixels out of the value and
    # the gradient even where their log-probability is -inf.
    total = torch.where(labelled, -picked * w, 0.0).sum()
    denom = w.sum()
    tiny = torch.finfo(log_probs.dtype).tiny
    return torch.where(denom > 0, total / denom.clamp(min=tiny), total * 0.0)


# ------------------------------------------------------------------- sizes
def soft_size(probs: torch.Tensor) -> torch.Tensor:
    """Soft size of every class in every slice: the sum of its probabilities.

    Parameters
    ----------
    probs : Tensor, float, ``(B, C, H, W)``
        Softmax probabilities (any subset of the classes).

    Returns
    -------
    Tensor, ``(B, C)``
        ``S[b, c] = sum_{h, w} probs[b, c, h, w]``, in pixels.
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (B, C, H, W); got shape {tuple(probs.shape)}")
    return probs.sum(dim=(2, 3))


def _as_bound(value: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` as a tensor of ``like``'s dtype/device that broadcasts to ``like``'s shape."""
    bound = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        shape = torch.broadcast_shapes(bound.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(f"{name} of shape {tuple(bound.shape)} does not broadcast to the sizes' shape {tuple(like.shape)}")
    return bound


def _quadratic(sizes: torch.Tensor, lower: torch.Tensor | float, upper: torch.Tensor | float) -> torch.Tensor:
    """Eq. (3) applied element-wise to ``sizes``."""
    below = (sizes - _as_bound(lower, sizes, "lower")).clamp(max=0.0)
    above = (sizes - _as_bound(upper, sizes, "upper")).clamp(min=0.0)
    return below.square() + above.square()


def size_penalty(
    probs: torch.Tensor,
    lower: torch.Tensor | float,
    upper: torch.Tensor | float,
) -> torch.Tensor:
    """Quadratic size penalty of the paper, eq. (3), per slice and class.

    With ``S = soft_size(probs)``::

        C = (S - lower)^2   if S < lower
            (S - upper)^2   if S > upper
            0               otherwise

    so ``dC/dS`` is ``2 (S - lower)``, ``2 (S - upper)`` and ``0`` -- the
    paper's eq. (4) -- and ``dC/dprobs[b, c, h, w] = dC/dS[b, c]`` for every
    pixel. Bounds ``[0, 0]`` (target absent) give ``S^2`` (suppression);
    ``lower = 0`` gives the paper's "one bound" runs.

    Parameters
    ----------
    probs : Tensor, float, ``(B, C, H, W)``
        Softmax probabilities.
    lower, upper : Tensor or float
        Bounds in pixels, broadcasting to ``(B, C)`` (e.g. ``(B, 1)`` per
        slice or a scalar). Not checked for ``lower <= upper``.

    Returns
    -------
    Tensor, ``(B, C)``
        Un-reduced, un-normalised penalty (pixels squared).
    """
    return _quadratic(soft_size(probs), lower, upper)


def volume_size_penalty(
    probs: torch.Tensor,
    lower: torch.Tensor | float,
    upper: torch.Tensor | float,
) -> torch.Tensor:
    """Quadratic penalty on the size of a whole volume (the paper's 3D variant).

    The batch holds every slice of one volume; the soft size is summed over
    the slices and compared with volume bounds (voxels) as in eq. (3).

    Parameters
    ----------
    probs : Tensor, float, ``(B, C, H, W)``
        Softmax probabilities of the ``B`` slices of one volume.
    lower, upper : Tensor or float
        Volume bounds in voxels, broadcasting to ``(C,)``.

    Returns
    -------
    Tensor, ``(C,)``
        Un-reduced penalty (voxels squared).
    """
    return _quadratic(soft_size(probs).sum(dim=0), lower, upper)


# ---------------------------------------------------------------- barriers
def _check_t(t: torch.Tensor | float) -> None:
    if isinstance(t, (int, float)) and not (math.isfinite(t) and t > 0):
        raise ValueError(f"log-barrier t must be a finite number > 0; got {t}")


def log_barrier(z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Extended log-barrier for the constraint ``z <= 0`` (Kervadec et al. 2019).

    ::

        psi_t(z) = -log(-z) / t                        if z <= -1/t^2
                   t z - log(1/t^2) / t + 1/t          otherwise

    The linear branch continues the log-barrier with the same value and
    slope (``t``) at ``z = -1/t^2``, so ``psi_t`` is C1, finite for every
    finite ``z`` (feasible or not) and approaches the hard barrier as ``t``
    grows. Its derivative is ``-1 / (t z)`` on the log side and ``t`` on the
    linear side.

    Parameters
    ----------
    z : Tensor, float, any shape
        Constraint values; ``z <= 0`` is feasible.
    t : float or Tensor broadcasting to ``z``
        Barrier parameter, > 0 (the follow-up grows it by x1.1 per epoch).

    Returns
    -------
    Tensor, ``z``'s shape and dtype
    """
    _check_t(t)
    t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
    joint = -1.0 / t.square()
    log_side = z <= joint
    # Both branches are evaluated by torch.where: feed the log a harmless
    # argument where the linear branch is taken, so neither the value nor the
    # gradient ever sees log(0) or log of a negative number.
    log_arg = torch.where(log_side, -z, torch.ones_like(z)).clamp(min=torch.finfo(z.dtype).tiny)
    log_branch = -torch.log(log_arg) / t
    linear_branch = t * z + 2.0 * torch.log(t) / t + 1.0 / t  # -log(1/t^2) = 2 log t
    return torch.where(log_side, log_branch, linear_branch)


def _barrier_pair(
    sizes: torch.Tensor,
    lower: torch.Tensor | float,
    upper: torch.Tensor | float,
    t: torch.Tensor | float,
    scale: float,
) -> torch.Tensor:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"log-barrier scale must be a finite number > 0; got {scale}")
    lo = _as_bound(lower, sizes, "lower")
    hi = _as_bound(upper, sizes, "upper")
    return log_barrier((lo - sizes) / scale, t) + log_barrier((sizes - hi) / scale, t)


def log_barrier_penalty(
    probs: torch.Tensor,
    lower: torch.Tensor | float,
    upper: torch.Tensor | float,
    t: torch.Tensor | float,
    scale: float = 1.0,
) -> torch.Tensor:
    """Extended log-barrier on both size bounds, per slice and class.

    ``psi_t((lower - S) / scale) + psi_t((S - upper) / scale)`` with
    ``S = soft_size(probs)`` and ``psi_t`` = :func:`log_barrier`. Finite for
    every size, including ``S = 0`` with bounds ``[0, 0]`` (suppression).
    Unlike :func:`size_penalty` it is not 0 inside the bounds: it keeps
    pushing the size away from them, more weakly as ``t`` grows.

    Parameters
    ----------
    probs : Tensor, float, ``(B, C, H, W)``
        Softmax probabilities.
    lower, upper : Tensor or float
        Bounds in pixels, broadcasting to ``(B, C)``.
    t : float or Tensor
        Barrier parameter, > 0.
    scale : float, default 1.0
        Sizes and bounds are divided by it (pixels per unit of ``z``), e.g.
        ``sqrt(H * W)`` so that ``t`` means the same at any image size.

    Returns
    -------
    Tensor, ``(B, C)``
        Un-reduced penalty.
    """
    return _barrier_pair(soft_size(probs), lower, upper, t, scale)


def volume_log_barrier_penalty(
    probs: torch.Tensor,
    lower: torch.Tensor | float,
    upper: torch.Tensor | float,
    t: torch.Tensor | float,
    scale: float = 1.0,
) -> torch.Tensor:
    """:func:`log_barrier_penalty` on the size of a whole volume.

    Parameters
    ----------
    probs : Tensor, float, ``(B, C, H, W)``
        Softmax probabilities of the ``B`` slices of one volume.
    lower, upper : Tensor or float
        Volume bounds in voxels, broadcasting to ``(C,)``.
    t : float or Tensor
        Barrier parameter, > 0.
    scale : float, default 1.0
        Sizes and bounds are divided by it.

    Returns
    -------
    Tensor, ``(C,)``
    """
    return _barrier_pair(soft_size(probs).sum(dim=0), lower, upper, t, scale)
