"""The proposals baseline (Pathak et al. 2015) on toy probability maps."""

import numpy as np
import pytest
import torch

from napari_sizeloss.proposals import PAPER_DUAL_LR, dual_lr, proposal_mask

H = W = 64
#: The paper's dual step is meant for 256x256 slices; violations in pixels are
#: (256*256)/(H*W) times smaller here, so scale the step accordingly.
LR = dual_lr(H, W)


def test_dual_lr_scales_with_area():
    assert dual_lr(256, 256) == PAPER_DUAL_LR
    assert dual_lr(64, 64) == pytest.approx(16 * PAPER_DUAL_LR)


def blob_probs(cy=30.0, cx=34.0, radius2=100.0, softness=20.0) -> torch.Tensor:
    """Probability map of a soft disc: p = sigmoid((r0^2 - r^2) / softness)."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    r2 = (y - cy) ** 2 + (x - cx) ** 2
    return torch.sigmoid((radius2 - r2) / softness).float()


def is_superlevel_set(mask: torch.Tensor, probs: torch.Tensor, fixed: torch.Tensor | None = None) -> bool:
    """True when every free foreground pixel is at least as probable as every free background pixel."""
    free = torch.ones_like(mask) if fixed is None else ~fixed
    fg = probs[mask & free]
    bg = probs[~mask & free]
    if fg.numel() == 0 or bg.numel() == 0:
        return True
    return bool(fg.min() >= bg.max())


def test_inactive_bounds_return_the_plain_argmax():
    probs = blob_probs()
    plain = probs > 0.5
    n = int(plain.sum())
    mask, info = proposal_mask(probs, None, n - 50, n + 50, lr=LR)
    assert torch.equal(mask, plain)
    assert int(info.iterations) == 0
    assert bool(info.satisfied)
    assert float(info.beta_upper) == 0.0 and float(info.beta_lower) == 0.0


def test_upper_active_case_meets_upper_bound():
    probs = blob_probs()
    plain_size = int((probs > 0.5).sum())
    upper = 100
    assert plain_size > 2 * upper  # the constraint is active
    mask, info = proposal_mask(probs, None, 0, upper, lr=LR)
    size = int(mask.sum())
    assert 0 < size <= upper
    assert float(info.size) == size
    assert bool(info.satisfied)
    assert float(info.beta_upper) > 0.0
    # The proposal is the argmax of log-odds shifted by one constant: a superlevel set of p.
    assert is_superlevel_set(mask, probs)


def test_lower_active_case_meets_lower_bound():
    """The reference checks beta_upper only, so it would return the 305-px argmax here."""
    probs = blob_probs()
    plain_size = int((probs > 0.5).sum())
    lower, upper = 600, 900
    assert plain_size < lower
    mask, info = proposal_mask(probs, None, lower, upper, lr=LR)
    size = int(mask.sum())
    assert lower <= size <= upper
    assert bool(info.satisfied)
    assert float(info.beta_lower) > 0.0
    assert is_superlevel_set(mask, probs)
    # It grows the plain argmax rather than moving elsewhere.
    assert bool((mask | ~(probs > 0.5)).all())


def attainable_sizes(probs: torch.Tensor) -> set[int]:
    """Sizes of all superlevel sets {p >= v} (the only masks a shifted argmax can give), and 0."""
    values = torch.unique(probs)
    return {0} | {int((probs >= v).sum()) for v in values}


def test_narrow_interval_is_met_both_from_above_and_from_below():
    probs = blob_probs(cy=30.3, cx=34.7)  # off-grid centre: the size grows almost pixel by pixel
    sizes = attainable_sizes(probs)
    for lower, upper in [(150, 155), (1000, 1005)]:
        assert any(lower <= s <= upper for s in sizes)  # feasible at pixel level
        mask, info = proposal_mask(probs, None, lower, upper, lr=LR)
        assert lower <= int(mask.sum()) <= upper, (lower, upper, info)


def test_absent_tag_bounds_give_an_empty_proposal():
    probs = blob_probs()
    mask, info = proposal_mask(probs, None, 0, 0, lr=LR)
    assert int(mask.sum()) == 0
    assert bool(info.satisfied)


def test_labelled_pixels_are_always_foreground():
    probs = blob_probs()
    seeds = torch.zeros(H, W, dtype=torch.bool)
    seeds[2:4, 2:4] = True  # in a corner where p is ~0
    seeds[30, 34] = True  # inside the blob
    for lower, upper in [(0, 60), (600, 900), (5, 5)]:  # 5 labelled pixels
        mask, info = proposal_mask(probs, seeds, lower, upper, lr=LR)
        assert bool(mask[seeds].all())
        assert lower <= int(mask.sum()) <= upper
        assert is_superlevel_set(mask, probs, fixed=seeds)


def test_infeasible_bounds_are_reported_not_hidden():
    probs = blob_probs()
    seeds = torch.zeros(H, W, dtype=torch.bool)
    seeds[:5, :5] = True  # 25 labelled pixels cannot fit under an upper bound of 10
    mask, info = proposal_mask(probs, seeds, 0, 10, lr=LR, max_iter=50)
    assert bool(mask[seeds].all())
    assert not bool(info.satisfied)
    assert int(info.iterations) == 50


def test_batch_matches_image_by_image():
    probs = torch.stack([blob_probs(), blob_probs(20, 40, 60, 10), blob_probs(40, 20, 200, 30)])
    lower = [0.0, 300.0, 100.0]
    upper = [100.0, 500.0, 2000.0]
    masks, info = proposal_mask(probs, None, lower, upper, lr=LR)
    assert masks.shape == probs.shape
    for b in range(3):
        single, single_info = proposal_mask(probs[b], None, lower[b], upper[b], lr=LR)
        assert torch.equal(masks[b], single)
        assert int(info.iterations[b]) == int(single_info.iterations[0])
    assert bool(info.satisfied.all())


def test_infinite_upper_bound_is_only_a_lower_bound():
    probs = blob_probs()
    mask, info = proposal_mask(probs, None, 700, float("inf"), lr=LR)
    assert int(mask.sum()) >= 700
    assert float(info.beta_upper) == 0.0


@pytest.mark.parametrize(
    "lower, upper",
    [(10, 5), (-1, 5)],
)
def test_contradictory_bounds_raise(lower, upper):
    with pytest.raises(ValueError):
        proposal_mask(blob_probs(), None, lower, upper)


def test_wrong_shapes_raise():
    with pytest.raises(ValueError):
        proposal_mask(torch.rand(2, 2, 8, 8), None, 0, 5)
    with pytest.raises(ValueError):
        proposal_mask(torch.rand(8, 8), torch.zeros(4, 4, dtype=torch.bool), 0, 5)


def test_random_maps_feasible_bounds_are_always_met():
    """Random smooth maps and random feasible intervals: the proposal lands inside."""
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        logits = torch.randn(1, 1, 16, 16, generator=gen) * 4
        probs = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(H, W), mode="bilinear"))[0, 0]
        lower = int(rng.integers(0, H * W // 2))
        upper = lower + int(rng.integers(30, 400))
        assert any(lower <= s <= upper for s in attainable_sizes(probs))
        mask, info = proposal_mask(probs, None, lower, upper, lr=LR)
        assert lower <= int(mask.sum()) <= upper, (lower, upper, info)
