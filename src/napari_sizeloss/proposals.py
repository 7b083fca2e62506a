"""Size-constrained segmentation proposals: the baseline of Pathak et al. (2015).

The proposals method (CCNN, as the paper's Table 1 runs it) does not put the
size constraint in the loss. For every training image it first builds a
*proposal* -- a full binary mask that is as close as possible to the
network's current prediction while its size lies in ``[lower, upper]`` --
and then fits the network to that mask with ordinary cross-entropy.

The proposal is found by Lagrangian duality on one foreground class, with one
dual variable per bound:

* ``beta_upper`` (the paper's beta_1) for ``size <= upper``,
* ``beta_lower`` (beta_2) for ``size >= lower``.

For fixed duals the latent distribution is ``u_fg ∝ p * exp(beta_lower -
beta_upper)`` against ``u_bg ∝ 1 - p``, i.e. the network's log-odds shifted by
``lam = beta_lower - beta_upper``. The proposal is the argmax of ``u`` (a
pixel is foreground iff ``logit(p) + lam > 0``), which is also the exact
minimiser of the Lagrangian of the binary problem

    min_y  sum_p BCE(y_p, p_p)  s.t.  lower <= sum_p y_p <= upper,

so ``size - upper`` and ``lower - size`` (with ``size`` the proposal's pixel
count) are sub-gradients of the dual function with respect to the two duals.
Projected (onto ``beta >= 0``) gradient ascent on them is what this module
runs. Labelled target pixels are fixed to 1 in the proposal and count in its
size.

Differences from the authors' reference code (see
``docs/reproduce.md``): both constraints are checked (the reference stops on
``beta_upper`` alone, so the lower bound is never enforced), and the step is
halved whenever the proposal jumps from one side of ``[lower, upper]`` to the
other, which makes the iteration settle (a diminishing-step sub-gradient
method) instead of oscillating when the size changes in big jumps.
Everything runs on tensors without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ProposalInfo", "proposal_mask", "dual_lr", "PAPER_MAX_ITER", "PAPER_DUAL_LR"]

#: Iterations of the dual ascent in the paper (the original method used 3000).
PAPER_MAX_ITER = 500
#: Dual step per pixel of constraint violation in the reference (at 256x256).
PAPER_DUAL_LR = 5e-5

_EPS = 1e-7


def dual_lr(height: int, width: int, lr_at_256: float = PAPER_DUAL_LR) -> float:
    """Dual step for an ``height x width`` grid that behaves like ``lr_at_256`` at 256x256.

    Violations are counted in pixels, so they scale with the image area; the
    step is scaled by ``256**2 / (height * width)`` to compensate.
    """
    return float(lr_at_256) * (256 * 256) / float(height * width)


@dataclass(frozen=True)
class ProposalInfo:
    """What the dual ascent did, per image.

    Attributes
    ----------
    iterations : torch.Tensor, int64 (B,)
        Dual updates applied before the image stopped (0: the plain argmax
        already satisfied both bounds).
    beta_upper, beta_lower : torch.Tensor, float (B,)
        Final dual variables (>= 0) of ``size <= upper`` and ``size >= lower``.
    size : torch.Tensor, float (B,)
        Foreground pixel count of the returned proposal.
    satisfied : torch.Tensor, bool (B,)
        Whether ``lower <= size <= upper`` holds for the returned proposal.
    converged : torch.Tensor, bool (B,)
        Whether the image stopped before ``max_iter`` (bounds met, or duals no
        longer moving by more than ``tol``).
    """

    iterations: torch.Tensor
    beta_upper: torch.Tensor
    beta_lower: torch.Tensor
    size: torch.Tensor
    satisfied: torch.Tensor
    converged: torch.Tensor


def _as_batch(value, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """Broadcast a scalar or (B,) bound to a float64 (B,) tensor on ``like``'s device."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    tensor = tensor.reshape(-1)
    if tensor.numel() != batch:
        raise ValueError(f"{name} must be a scalar or have one value per image ({batch}), got {tensor.numel()}")
    return tensor.clone()


@torch.no_grad()
def proposal_mask(
    probs: torch.Tensor,
    seeds_target: torch.Tensor | None,
    lower,
    upper,
    max_iter: int = PAPER_MAX_ITER,
    lr: float = PAPER_DUAL_LR,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, ProposalInfo]:
    """Binary proposal closest to ``probs`` whose size lies in ``[lower, upper]``.

    Parameters
    ----------
    probs : torch.Tensor, float, (H, W) or (B, H, W)
        Network probability of the target class (softmax channel 1), in [0, 1].
    seeds_target : torch.Tensor, bool, same shape as ``probs``, or None
        Labelled target pixels; they are 1 in every proposal.
    lower, upper : float or sequence/tensor of B floats
        Size bounds in pixels of ``probs``'s grid (convert mm^2 bounds with
        the pixel area first). ``upper`` may be ``inf``; ``[0, 0]`` asks for
        an empty proposal (image tagged target-absent).
    max_iter : int
        Most dual updates per image (the paper uses 500).
    lr : float
        Dual step per pixel of violation: each update moves a dual by
        ``lr * violation_px``. Because violations are counted in pixels, the
        same ``lr`` takes bigger dual steps on bigger images; the paper's
        5e-5 is meant for 256x256 slices -- scale it by ``256**2 / (H*W)`` to
        get the same behaviour on an ``H x W`` grid.
    tol : float
        An image also stops when neither dual moved by more than ``tol`` in
        one update (the iteration has settled on a jump of the size that
        straddles the interval: the bounds cannot be met at pixel level).

    Returns
    -------
    mask : torch.Tensor, bool, same shape as ``probs``
        The proposal: argmax of the latent distribution, labelled pixels set.
    info : ProposalInfo
        Per-image iterations, duals, proposal size and whether the bounds hold.

    Raises
    ------
    ValueError
        For a wrong shape, ``lower > upper``, negative bounds or a
        non-positive ``lr`` / ``max_iter < 0``.
    """
    if probs.ndim not in (2, 3):
        raise ValueError(f"probs must have shape (H, W) or (B, H, W), got {tuple(probs.shape)}")
    single = probs.ndim == 2
    p = probs.detach()
    if single:
        p = p.unsqueeze(0)
    batch = p.shape[0]
    if seeds_target is None:
        fixed = torch.zeros_like(p, dtype=torch.bool)
    else:
        fixed = seeds_target.detach().to(device=p.device, dtype=torch.bool)
        if single:
            fixed = fixed.unsqueeze(0)
        if fixed.shape != p.shape:
            raise ValueError(f"seeds_target has shape {tuple(seeds_target.shape)}, expected {tuple(probs.shape)}")
    low = _as_batch(lower, batch, p, "lower")
    up = _as_batch(upper, batch, p, "upper")
    if bool((low < 0).any()):
        raise ValueError(f"lower bound must be >= 0, got {low.min().item()}")
    if bool((low > up).any()):
        raise ValueError("lower bound larger than upper bound for at least one image")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")

    pf = p.to(torch.float64).clamp(_EPS, 1.0 - _EPS)
    logit = torch.log(pf) - torch.log1p(-pf)

    beta_up = torch.zeros(batch, dtype=torch.float64, device=p.device)
    beta_low = torch.zeros_like(beta_up)
    step = torch.full_like(beta_up, float(lr))
    last_side = torch.zeros(batch, dtype=torch.int8, device=p.device)  # -1 below, +1 above
    active = torch.ones(batch, dtype=torch.bool, device=p.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=p.device)
    iterations = torch.zeros(batch, dtype=torch.int64, device=p.device)

    def proposal(lam: torch.Tensor) -> torch.Tensor:
        return (logit + lam.view(-1, 1, 1) > 0) | fixed

    mask = proposal(beta_low - beta_up)
    size = mask.flatten(1).sum(1).to(torch.float64)
    for _ in range(max_iter + 1):
        above = size > up
        below = size < low
        feasible = ~(above | below)
        newly_done = active & feasible
        converged |= newly_done
        active &= ~feasible
        if not bool(active.any()) or bool((iterations[active] >= max_iter).all()):
            break
        side = above.to(torch.int8) - below.to(torch.int8)
        flipped = active & (last_side != 0) & (side != last_side)
        step = torch.where(flipped, step * 0.5, step)
        last_side = torch.where(active, side, last_side)
        new_up = torch.clamp(beta_up + step * (size - up), min=0.0)
        new_low = torch.clamp(beta_low + step * (low - size), min=0.0)
        # An infinite upper bound gives -inf * step: its dual simply stays at 0.
        new_up = torch.nan_to_num(new_up, nan=0.0, posinf=0.0, neginf=0.0)
        moved = torch.maximum((new_up - beta_up).abs(), (new_low - beta_low).abs())
        beta_up = torch.where(active, new_up, beta_up)
        beta_low = torch.where(active, new_low, beta_low)
        iterations = iterations + active.to(torch.int64)
        stalled = active & (moved <= tol)
        converged |= stalled
        new_mask = proposal(beta_low - beta_up)
        mask = torch.where(active.view(-1, 1, 1), new_mask, mask)
        size = mask.flatten(1).sum(1).to(torch.float64)
        active &= ~stalled

    satisfied = (size >= low) & (size <= up)
    info = ProposalInfo(
        iterations=iterations,
        beta_upper=beta_up,
        beta_lower=beta_low,
        size=size,
        satisfied=satisfied,
        converged=converged | satisfied,
    )
    if single:
        mask = mask[0]
    return mask, info
