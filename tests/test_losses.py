"""Tests of napari_sizeloss.losses against independent numpy computations."""

import math

import numpy as np
import pytest
import torch

from napari_sizeloss.losses import (
    IGNORE_INDEX,
    check_target_range,
    log_barrier,
    log_barrier_penalty,
    partial_cross_entropy,
    seeds_to_targets,
    size_penalty,
    soft_size,
    volume_log_barrier_penalty,
    volume_size_penalty,
)
from napari_sizeloss.weak_labels import SeedsError


def eq3(S: np.ndarray, a, b) -> np.ndarray:
    """The paper's eq. (3), written out case by case in numpy."""
    S = np.asarray(S, dtype=np.float64)
    a = np.broadcast_to(np.asarray(a, dtype=np.float64), S.shape)
    b = np.broadcast_to(np.asarray(b, dtype=np.float64), S.shape)
    out = np.zeros_like(S)
    for idx in np.ndindex(S.shape):
        s = S[idx]
        if s < a[idx]:
            out[idx] = (s - a[idx]) ** 2
        elif s > b[idx]:
            out[idx] = (s - b[idx]) ** 2
    return out


def eq4(S: np.ndarray, a, b) -> np.ndarray:
    """dC/dS of eq. (4): 2(S - a) below, 2(S - b) above, 0 inside."""
    S = np.asarray(S, dtype=np.float64)
    a = np.broadcast_to(np.asarray(a, dtype=np.float64), S.shape)
    b = np.broadcast_to(np.asarray(b, dtype=np.float64), S.shape)
    return np.where(S < a, 2 * (S - a), np.where(S > b, 2 * (S - b), 0.0))


def random_probs(rng, B=4, C=2, H=6, W=5) -> torch.Tensor:
    logits = torch.from_numpy(rng.normal(size=(B, C, H, W)))
    return torch.softmax(logits, dim=1)


# ------------------------------------------------------------ seeds/targets
def test_seeds_to_targets_maps_codes():
    seeds = torch.tensor([[[0, 1, 2], [2, 0, 1]]], dtype=torch.uint8)
    targets = seeds_to_targets(seeds)
    assert targets.dtype == torch.int64
    assert targets.tolist() == [[[IGNORE_INDEX, 1, 0], [0, IGNORE_INDEX, 1]]]
    assert seeds_to_targets(np.array([[1, 2]], dtype=np.int32)).tolist() == [[1, 0]]


def test_seeds_to_targets_rejects_unknown_codes():
    with pytest.raises(SeedsError, match="code 3"):
        seeds_to_targets(torch.tensor([[0, 3]]))
    with pytest.raises(SeedsError, match="integer"):
        seeds_to_targets(torch.tensor([[0.0, 1.0]]))


# ------------------------------------------------------------ cross-entropy
def manual_partial_ce(logits: np.ndarray, targets: np.ndarray, weight=None) -> float:
    """Loop over pixels; stable log-softmax by subtracting the max."""
    num = den = 0.0
    B, C, H, W = logits.shape
    for b in range(B):
        for h in range(H):
            for w in range(W):
                y = targets[b, h, w]
                if y == IGNORE_INDEX:
                    continue
                z = logits[b, :, h, w]
                m = z.max()
                log_p = z[y] - m - math.log(np.exp(z - m).sum())
                wt = 1.0 if weight is None else weight[b, h, w]
                num += -wt * log_p
                den += wt
    return num / den


def test_partial_ce_equals_manual_mean_over_labelled_pixels(rng):
    logits = rng.normal(scale=3.0, size=(2, 3, 5, 4))
    targets = np.full((2, 5, 4), IGNORE_INDEX)
    targets[0, 1, 2] = 2
    targets[0, 4, 0] = 0
    targets[1, 0, 0] = 1
    targets[1, 3, 3] = 1
    targets[1, 2, 1] = 0
    got = partial_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets))
    assert got.item() == pytest.approx(manual_partial_ce(logits, targets), rel=1e-10)


def test_partial_ce_one_mean_over_batch_not_mean_of_means(rng):
    # 1 labelled pixel in slice 0, 3 in slice 1: the batch mean weights pixels, not slices.
    logits = rng.normal(size=(2, 2, 3, 3))
    targets = np.full((2, 3, 3), IGNORE_INDEX)
    targets[0, 0, 0] = 1
    targets[1, 0, :] = 0
    got = partial_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert got == pytest.approx(manual_partial_ce(logits, targets), rel=1e-10)
    mean_of_means = 0.5 * (manual_partial_ce(logits[:1], targets[:1]) + manual_partial_ce(logits[1:], targets[1:]))
    assert got != pytest.approx(mean_of_means, rel=1e-6)


def test_partial_ce_ignores_unlabelled_pixels(rng):
    logits = torch.from_numpy(rng.normal(size=(2, 2, 4, 4)))
    targets = torch.full((2, 4, 4), IGNORE_INDEX, dtype=torch.int64)
    targets[0, 1, 1] = 1
    targets[1, 2, 3] = 0
    base = partial_cross_entropy(logits, targets)
    changed = logits.clone()
    unlabelled = (targets == IGNORE_INDEX).unsqueeze(1).expand_as(changed)
    changed[unlabelled] = torch.from_numpy(rng.normal(scale=50.0, size=int(unlabelled.sum())))
    assert partial_cross_entropy(changed, targets).item() == base.item()
    # ... and no gradient reaches them
    leaf = logits.clone().requires_grad_(True)
    partial_cross_entropy(leaf, targets).backward()
    assert torch.all(leaf.grad[unlabelled] == 0)
    assert torch.all(leaf.grad[~unlabelled] != 0)


def test_partial_ce_supervises_background_dots():
    # Only a background dot: the loss must favour class 0 at that pixel.
    logits = torch.zeros(1, 2, 3, 3, requires_grad=True)
    targets = torch.full((1, 3, 3), IGNORE_INDEX, dtype=torch.int64)
    targets[0, 1, 1] = 0
    loss = partial_cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(math.log(2.0))
    loss.backward()
    assert logits.grad[0, 0, 1, 1] < 0 < logits.grad[0, 1, 1, 1]  # descent raises class 0


def test_partial_ce_stable_for_huge_logits():
    logits = torch.tensor([[[[1000.0]], [[-1000.0]]]])  # (1, 2, 1, 1)
    targets = torch.tensor([[[1]]])
    loss = partial_cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(2000.0)


def test_partial_ce_without_labels_is_zero_with_grad():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    loss = partial_cross_entropy(logits, torch.full((2, 4, 4), IGNORE_INDEX))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_partial_ce_weighted_mean(rng):
    logits = rng.normal(size=(2, 2, 3, 3))
    targets = rng.integers(-1, 2, size=(2, 3, 3))
    targets[0, 0, 0] = 1
    weight = rng.uniform(0.1, 3.0, size=(2, 3, 3))
    got = partial_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), weight=torch.from_numpy(weight))
    assert got.item() == pytest.approx(manual_partial_ce(logits, targets, weight), rel=1e-10)
    # weights on unlabelled pixels do not matter
    weight2 = weight.copy()
    weight2[targets == IGNORE_INDEX] = 1e6
    got2 = partial_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), weight=torch.from_numpy(weight2))
    assert got2.item() == pytest.approx(got.item(), rel=1e-12)


def test_partial_ce_half_precision_logits_give_float32():
    logits = torch.randn(1, 2, 2, 2).to(torch.bfloat16)
    loss = partial_cross_entropy(logits, torch.tensor([[[1, 0], [-1, -1]]]))
    assert loss.dtype == torch.float32
    assert math.isfinite(loss.item())


def test_partial_ce_rejects_bad_inputs():
    logits = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match="targets shape"):
        partial_cross_entropy(logits, torch.zeros(1, 3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        partial_cross_entropy(logits, torch.full((1, 3, 3), 2))
    with pytest.raises(ValueError, match="weight shape"):
        partial_cross_entropy(logits, torch.zeros(1, 3, 3, dtype=torch.int64), weight=torch.ones(3, 3))
    with pytest.raises(ValueError, match="logits"):
        partial_cross_entropy(torch.zeros(2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.int64))


def test_target_range_check_names_the_range_on_host_and_tensor_targets():
    for bad in (np.array([[0, 3]]), torch.tensor([[-2, 1]])):
        with pytest.raises(ValueError, match=r"targets must lie in \[-1, 2\] for 3 classes"):
            check_target_range(bad, 3)
    check_target_range(np.array([[-1, 2]]), 3)
    check_target_range(torch.zeros(0, dtype=torch.int64), 3)  # nothing to check
    # a caller that checked its targets on the host skips the device read-back
    logits = torch.zeros(1, 2, 1, 2)
    targets = torch.tensor([[[1, -1]]])
    assert partial_cross_entropy(logits, targets, check_targets=False).item() == pytest.approx(math.log(2))


# ------------------------------------------------------------ size penalty
def test_soft_size_sums_pixels(rng):
    probs = random_probs(rng)
    S = soft_size(probs)
    assert S.shape == (4, 2)
    np.testing.assert_allclose(S.numpy(), probs.numpy().sum(axis=(2, 3)))


def bounds_for_all_regimes(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-(b, c) bounds putting S below, inside and above its interval in turn."""
    lower = np.empty_like(S)
    upper = np.empty_like(S)
    regime = np.arange(S.size).reshape(S.shape) % 3
    lower[regime == 0], upper[regime == 0] = S[regime == 0] + 2.0, S[regime == 0] + 9.0  # below
    lower[regime == 1], upper[regime == 1] = S[regime == 1] - 1.5, S[regime == 1] + 1.5  # inside
    lower[regime == 2], upper[regime == 2] = S[regime == 2] - 7.0, S[regime == 2] - 3.0  # above
    return lower, upper


def test_size_penalty_equals_eq3_in_all_regimes(rng):
    probs = random_probs(rng, B=4, C=3)
    S = probs.numpy().sum(axis=(2, 3))
    lower, upper = bounds_for_all_regimes(S)
    got = size_penalty(probs, torch.from_numpy(lower), torch.from_numpy(upper))
    assert got.shape == (4, 3)
    expected = eq3(S, lower, upper)
    assert (expected > 0).sum() == 8 and (expected == 0).sum() == 4  # all regimes present
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(got.numpy()[expected > 0], [4.0, 9.0] * 4, rtol=1e-9)


def test_size_penalty_gradient_is_eq4_at_every_pixel(rng):
    probs = random_probs(rng, B=4, C=3).requires_grad_(True)
    S = probs.detach().numpy().sum(axis=(2, 3))
    lower, upper = bounds_for_all_regimes(S)
    size_penalty(probs, torch.from_numpy(lower), torch.from_numpy(upper)).sum().backward()
    expected = np.broadcast_to(eq4(S, lower, upper)[:, :, None, None], probs.shape)
    np.testing.assert_allclose(probs.grad.numpy(), expected, rtol=1e-9)


def test_size_penalty_zero_value_and_gradient_inside(rng):
    probs = random_probs(rng).requires_grad_(True)
    S = probs.detach().numpy().sum(axis=(2, 3))
    pen = size_penalty(probs, torch.from_numpy(S - 0.5), torch.from_numpy(S + 0.5))
    assert torch.all(pen == 0)
    pen.sum().backward()
    assert torch.all(probs.grad == 0)


def test_size_penalty_bounds_broadcast(rng):
    probs = random_probs(rng, B=3, C=2)
    S = probs.numpy().sum(axis=(2, 3))
    per_slice_lo = np.array([[10.0], [0.0], [5.0]])
    per_slice_hi = np.array([[20.0], [1.0], [12.0]])
    got = size_penalty(probs, torch.from_numpy(per_slice_lo), torch.from_numpy(per_slice_hi))
    np.testing.assert_allclose(got.numpy(), eq3(S, per_slice_lo, per_slice_hi), rtol=1e-12)
    got_scalar = size_penalty(probs, 14.0, 16.0)
    np.testing.assert_allclose(got_scalar.numpy(), eq3(S, 14.0, 16.0), rtol=1e-12)
    assert got_scalar.shape == (3, 2)


def test_size_penalty_rejects_bounds_that_grow_the_shape(rng):
    probs = random_probs(rng, B=3, C=1)
    with pytest.raises(ValueError, match="lower"):
        size_penalty(probs, torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="upper"):
        size_penalty(probs, 0.0, torch.zeros(4))


def test_size_penalty_zero_bounds_suppress_with_S_squared(rng):
    probs = random_probs(rng).requires_grad_(True)
    S = probs.detach().sum(dim=(2, 3))
    pen = size_penalty(probs, 0.0, 0.0)
    torch.testing.assert_close(pen, S.square())
    pen.sum().backward()
    torch.testing.assert_close(probs.grad, (2 * S)[:, :, None, None].expand_as(probs))


def test_size_penalty_one_bound_is_zero_below_upper(rng):
    probs = random_probs(rng)
    S = probs.sum(dim=(2, 3))
    pen = size_penalty(probs, 0.0, S + 1.0)
    assert torch.all(pen == 0)


def test_volume_size_penalty_sums_over_batch(rng):
    probs = random_probs(rng, B=5, C=2).requires_grad_(True)
    V = probs.detach().numpy().sum(axis=(0, 2, 3))  # (C,)
    lower = np.array([V[0] + 3.0, V[1] - 10.0])
    upper = np.array([V[0] + 8.0, V[1] - 4.0])
    pen = volume_size_penalty(probs, torch.from_numpy(lower), torch.from_numpy(upper))
    assert pen.shape == (2,)
    np.testing.assert_allclose(pen.detach().numpy(), [9.0, 16.0], rtol=1e-9)
    np.testing.assert_allclose(pen.detach().numpy(), eq3(V, lower, upper), rtol=1e-12)
    pen.sum().backward()
    expected = np.broadcast_to(eq4(V, lower, upper)[None, :, None, None], probs.shape)
    np.testing.assert_allclose(probs.grad.numpy(), expected, rtol=1e-9)
    # per-slice penalties with the same bounds would differ
    assert not np.allclose(size_penalty(probs, 0.0, 1.0).detach().sum(0).numpy(), volume_size_penalty(probs, 0.0, 1.0).detach().numpy())


# --------------------------------------------------------------- barriers
def psi_numpy(z: float, t: float) -> float:
    if z <= -1.0 / t**2:
        return -math.log(-z) / t
    return t * z - math.log(1.0 / t**2) / t + 1.0 / t


@pytest.mark.parametrize("t", [0.5, 1.0, 5.0, 20.0])
def test_log_barrier_matches_definition(t):
    z = np.concatenate([-np.logspace(-6, 6, 40), np.linspace(-1.0, 1.0, 41), np.logspace(-6, 6, 40)])
    got = log_barrier(torch.from_numpy(z), t).numpy()
    np.testing.assert_allclose(got, [psi_numpy(v, t) for v in z], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [1.0, 5.0, 100.0])
def test_log_barrier_finite_value_and_gradient_everywhere(t, dtype):
    z = torch.tensor([0.0, -0.0, -1.0 / t**2, -1e30, 1e30, -1e-30, 1e-30, -1e-45], dtype=dtype, requires_grad=True)
    value = log_barrier(z, t)
    value.sum().backward()
    assert torch.isfinite(value).all()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("t", [0.7, 3.0, 12.0])
def test_log_barrier_value_and_slope_continuous_at_joint(t):
    z0 = -1.0 / t**2
    eps = 1e-9
    left = torch.tensor([z0 - eps], dtype=torch.float64, requires_grad=True)
    right = torch.tensor([z0 + eps], dtype=torch.float64, requires_grad=True)
    vl, vr = log_barrier(left, t), log_barrier(right, t)
    (vl + vr).sum().backward()
    assert vl.item() == pytest.approx(vr.item(), abs=1e-7)
    assert vl.item() == pytest.approx(2 * math.log(t) / t, rel=1e-6)  # -log(-z0)/t
    assert left.grad.item() == pytest.approx(right.grad.item(), rel=1e-6)
    assert right.grad.item() == pytest.approx(t)


@pytest.mark.parametrize("t", [0.5, 4.0])
def test_log_barrier_derivative_on_each_side(t):
    joint = -1.0 / t**2
    z_log = torch.tensor([1.5 * joint, 3.0 * joint, 100.0 * joint], dtype=torch.float64, requires_grad=True)
    log_barrier(z_log, t).sum().backward()
    torch.testing.assert_close(z_log.grad, 1.0 / (-z_log.detach() * t))
    z_lin = torch.tensor([0.5 * joint, 0.0, 2.0, 1e6], dtype=torch.float64, requires_grad=True)
    log_barrier(z_lin, t).sum().backward()
    torch.testing.assert_close(z_lin.grad, torch.full_like(z_lin, t))


def test_log_barrier_rejects_bad_t():
    with pytest.raises(ValueError, match="t must be"):
        log_barrier(torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="t must be"):
        log_barrier(torch.zeros(2), float("nan"))


def test_log_barrier_penalty_matches_definition(rng):
    probs = random_probs(rng, B=3, C=2)
    S = probs.numpy().sum(axis=(2, 3))
    lower = np.array([[0.0], [S[1, 0] + 4.0], [S[2].min() - 2.0]])
    upper = np.array([[0.0], [S[1, 0] + 9.0], [S[2].max() + 2.0]])
    t, scale = 3.0, 5.0
    got = log_barrier_penalty(probs, torch.from_numpy(lower), torch.from_numpy(upper), t, scale=scale).numpy()
    lo = np.broadcast_to(lower, S.shape)
    hi = np.broadcast_to(upper, S.shape)
    expected = np.array(
        [[psi_numpy((lo[i, j] - S[i, j]) / scale, t) + psi_numpy((S[i, j] - hi[i, j]) / scale, t) for j in range(2)] for i in range(3)]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_log_barrier_penalty_finite_for_suppression_at_zero_size():
    probs = torch.zeros(2, 1, 4, 4, requires_grad=True)
    pen = log_barrier_penalty(probs, 0.0, 0.0, t=5.0)
    pen.sum().backward()
    assert torch.isfinite(pen).all() and torch.isfinite(probs.grad).all()
    # at S = 0 the lower term is on its linear side (z = 0), the upper too: slope t - t = 0
    torch.testing.assert_close(probs.grad, torch.zeros_like(probs))
    # a non-empty slice with [0, 0] bounds is pushed down
    probs2 = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    log_barrier_penalty(probs2, 0.0, 0.0, t=5.0).sum().backward()
    assert torch.all(probs2.grad > 0)


def test_log_barrier_penalty_pushes_size_into_bounds(rng):
    probs = random_probs(rng, B=2, C=1).requires_grad_(True)
    S = probs.detach().sum(dim=(2, 3))
    lower = torch.stack([S[0] + 5.0, S[1] - 20.0])
    upper = torch.stack([S[0] + 20.0, S[1] - 5.0])
    log_barrier_penalty(probs, lower, upper, t=2.0).sum().backward()
    assert torch.all(probs.grad[0] < 0)  # too small: descent grows it
    assert torch.all(probs.grad[1] > 0)  # too large: descent shrinks it


def test_volume_log_barrier_penalty_uses_volume_size(rng):
    probs = random_probs(rng, B=4, C=2)
    V = probs.numpy().sum(axis=(0, 2, 3))
    lower = np.array([V[0] - 3.0, 0.0])
    upper = np.array([V[0] + 1.0, V[1] - 2.0])
    got = volume_log_barrier_penalty(probs, torch.from_numpy(lower), torch.from_numpy(upper), 2.0, scale=2.0).numpy()
    expected = [psi_numpy((lower[c] - V[c]) / 2.0, 2.0) + psi_numpy((V[c] - upper[c]) / 2.0, 2.0) for c in range(2)]
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
