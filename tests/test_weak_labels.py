"""Weak labels: the paper's eroded labels, simulated clicks, seed validation."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sizeloss.weak_labels import (
    SEED_BACKGROUND,
    SEED_TARGET,
    SEED_UNLABELLED,
    SeedsError,
    click_seeds,
    dot_centres,
    erosion_weak_labels,
    seeded_slices,
    validate_seeds,
)

SQUARE = np.ones((3, 3), dtype=bool)


def disc(shape, centre, radius):
    x, y = np.ogrid[: shape[0], : shape[1]]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def test_seed_codes_follow_the_contract():
    assert (SEED_UNLABELLED, SEED_TARGET, SEED_BACKGROUND) == (0, 1, 2)
    assert issubclass(SeedsError, ValueError)


# ------------------------------------------------------------------ erosion
def test_erosion_of_a_large_disc_is_ten_erosions_by_the_3x3_square():
    mask = disc((64, 64), (30, 34), 20)
    weak = erosion_weak_labels(mask)
    np.testing.assert_array_equal(weak, ndi.binary_erosion(mask, SQUARE, iterations=10))
    assert weak.any()
    # strictly inside: one pixel of margin all round, and a small part of the target
    assert not (ndi.binary_dilation(weak, SQUARE) & ~mask).any()
    assert weak.sum() < 0.4 * mask.sum()
    # equivalent to one erosion by a 21 x 21 square
    np.testing.assert_array_equal(weak, ndi.binary_erosion(mask, np.ones((21, 21), bool)))


def test_erosion_falls_back_to_fewer_iterations_for_a_thin_object():
    mask = np.zeros((40, 40), bool)
    mask[10:15, 5:35] = True  # 5 px wide: survives 2 erosions, not 3
    weak = erosion_weak_labels(mask, iterations=10)
    assert weak.any()
    np.testing.assert_array_equal(weak, ndi.binary_erosion(mask, SQUARE, iterations=2))
    assert not ndi.binary_erosion(mask, SQUARE, iterations=3).any()
    assert weak.sum() == 26  # the 1 px centre line, 30 - 2 * 2 long


def test_erosion_treats_the_image_border_as_background():
    mask = np.ones((30, 30), bool)
    weak = erosion_weak_labels(mask, iterations=10)
    expected = np.zeros_like(mask)
    expected[10:20, 10:20] = True
    np.testing.assert_array_equal(weak, expected)


def test_erosion_works_per_slice_and_keeps_empty_slices_empty():
    stack = np.zeros((48, 48, 3, 2), bool)
    stack[..., 0, 0] = disc((48, 48), (24, 24), 15)
    stack[20:23, 5:40, 1, 0] = True  # 3 px wide bar: one erosion leaves a line
    stack[30, 30, 2, 1] = True  # a single pixel: no erosion at all
    weak = erosion_weak_labels(stack, iterations=10)
    assert weak.shape == stack.shape and weak.dtype == bool
    np.testing.assert_array_equal(weak[..., 0, 0], ndi.binary_erosion(stack[..., 0, 0], SQUARE, iterations=10))
    np.testing.assert_array_equal(weak[..., 1, 0], ndi.binary_erosion(stack[..., 1, 0], SQUARE, iterations=1))
    np.testing.assert_array_equal(weak[..., 2, 1], stack[..., 2, 1])
    assert not weak[..., 1, 1].any() and not weak[..., 0, 1].any()
    np.testing.assert_array_equal(weak.any(axis=(0, 1)), stack.any(axis=(0, 1)))
    assert not (weak & ~stack).any()


def test_erosion_of_the_phantom_keeps_every_non_empty_slice():
    from napari_sizeloss.phantom import make_cine_phantom

    ph = make_cine_phantom((96, 84, 6, 4), seed=2)
    target = ph.labels == 3
    weak = erosion_weak_labels(target)
    np.testing.assert_array_equal(weak.any(axis=(0, 1)), target.any(axis=(0, 1)))
    assert not (weak & ~target).any()
    assert 0 < weak.sum() < 0.25 * target.sum()


def test_erosion_rejects_negative_iterations():
    with pytest.raises(ValueError, match="iterations"):
        erosion_weak_labels(np.ones((5, 5), bool), iterations=-1)


# ------------------------------------------------------------------- clicks
@pytest.fixture
def cine_mask():
    mask = np.zeros((64, 56, 4, 3), bool)
    for z, radius in enumerate((18, 14, 11, 0)):
        for t in range(3):
            if radius:
                mask[..., z, t] = disc((64, 56), (32 + t, 28 - z), radius - t)
    return mask


@pytest.mark.parametrize("radius, pixels", [(0, 1), (1, 5), (2, 13)])
def test_click_dots_are_k_separate_discs_inside_the_mask(cine_mask, radius, pixels):
    seeds = click_seeds(cine_mask, k=3, radius=radius, rng=0)
    assert seeds.shape == cine_mask.shape and seeds.dtype == np.uint8
    assert set(np.unique(seeds)) <= {SEED_UNLABELLED, SEED_TARGET}
    assert cine_mask[seeds == SEED_TARGET].all()
    offsets = np.argwhere(disc((2 * radius + 1,) * 2, (radius, radius), radius)) - radius
    for z in range(4):
        for t in range(3):
            dots = seeds[..., z, t] == SEED_TARGET
            if not cine_mask[..., z, t].any():
                assert not dots.any()
                continue
            labelled, n = ndi.label(dots, structure=SQUARE)  # 8-connected: dots do not even touch
            assert n == 3
            for i in range(1, n + 1):
                pts = np.argwhere(labelled == i)
                assert len(pts) == pixels
                centre = pts.mean(axis=0).round().astype(int)
                np.testing.assert_array_equal(np.sort(pts - centre, axis=0), np.sort(offsets, axis=0))
                # the whole disc fits: its centre is deeper than the radius
                assert ndi.distance_transform_edt(cine_mask[..., z, t])[tuple(centre)] > radius


def test_clicks_are_reproducible_with_a_seed(cine_mask):
    a = click_seeds(cine_mask, k=2, rng=7)
    b = click_seeds(cine_mask, k=2, rng=7)
    c = click_seeds(cine_mask, k=2, rng=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = click_seeds(cine_mask, k=2, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, d)


def test_clicks_only_on_chosen_slices_and_frames(cine_mask):
    seeds = click_seeds(cine_mask, k=2, slices=[0, 2], frames=[1], rng=1)
    expected = np.zeros((4, 3), bool)
    expected[[0, 2], 1] = True
    np.testing.assert_array_equal(seeded_slices(seeds), expected)
    # a chosen slice without target gets no target dot
    seeds = click_seeds(cine_mask, k=2, slices=[3], rng=1)
    assert not (seeds == SEED_TARGET).any()


def test_background_dots_lie_outside_the_mask_with_a_margin(cine_mask):
    seeds = click_seeds(cine_mask, k=1, radius=1, rng=3, background_k=4, background_margin=6)
    for z in range(4):
        for t in range(3):
            background = seeds[..., z, t] == SEED_BACKGROUND
            _, n = ndi.label(background, structure=SQUARE)
            assert n == 4
            if cine_mask[..., z, t].any():
                distance = ndi.distance_transform_edt(~cine_mask[..., z, t])
                assert distance[background].min() > 6 - 1  # centre beyond 6 px, disc radius 1
    assert not cine_mask[seeds == SEED_BACKGROUND].any()
    assert cine_mask[seeds == SEED_TARGET].all()


def test_background_within_puts_dots_on_the_ring_around_the_target(cine_mask):
    seeds = click_seeds(cine_mask, k=2, radius=1, rng=5, background_k=3, background_margin=2, background_within=8)
    for z in range(4):
        for t in range(3):
            target = cine_mask[..., z, t]
            if not target.any():
                continue
            distance = ndi.distance_transform_edt(~target)
            centres = [c for c in dot_centres(seeds, SEED_BACKGROUND) if c[2] == z and c[3] == t]
            assert len(centres) == 3
            for cx, cy, _, _ in centres:
                assert 2 < distance[cx, cy] <= 8  # on the ring, not anywhere in the image
    with pytest.raises(ValueError, match="must exceed"):
        click_seeds(cine_mask, background_k=1, background_margin=5, background_within=4)


def test_dot_centres_count_dots_per_slice():
    seeds = np.zeros((20, 20, 2, 1), np.uint8)
    seeds[4:7, 4:7, 0, 0] = SEED_TARGET  # a 3x3 dot centred at (5, 5)
    seeds[4:7, 4:7, 1, 0] = SEED_TARGET  # the same place one slice on: another dot
    seeds[12, 15, 1, 0] = SEED_BACKGROUND
    target = dot_centres(seeds, SEED_TARGET)
    assert sorted(map(tuple, target)) == [(5, 5, 0, 0), (5, 5, 1, 0)]
    assert [tuple(r) for r in dot_centres(seeds, SEED_BACKGROUND)] == [(12, 15, 1, 0)]
    assert dot_centres(np.zeros((5, 5, 1, 1), np.uint8)).shape == (0, 4)


def test_thin_target_gets_one_dot_at_its_deepest_point_cut_to_the_mask():
    mask = np.zeros((20, 20, 1), bool)
    mask[5:15, 9:11, 0] = True  # 2 px wide: no pixel is 2 px deep
    seeds = click_seeds(mask, k=3, radius=1, rng=0)
    dots = seeds == SEED_TARGET
    assert dots.any()
    assert mask[dots].all()
    assert ndi.label(dots[..., 0], structure=SQUARE)[1] == 1


def test_clicks_on_the_phantom_never_leave_the_cavity():
    from napari_sizeloss.phantom import make_cine_phantom

    ph = make_cine_phantom((96, 84, 6, 4), seed=5)
    target = ph.labels == 3
    seeds = click_seeds(target, k=3, radius=1, rng=5, background_k=1)
    assert target[seeds == SEED_TARGET].all()
    assert not target[seeds == SEED_BACKGROUND].any()
    np.testing.assert_array_equal(seeded_slices(seeds), target.any(axis=(0, 1)))


def test_click_seeds_handles_2d_and_3d_masks():
    mask2d = disc((40, 40), (20, 20), 10)
    seeds = click_seeds(mask2d, k=2, rng=0)
    assert seeds.shape == (40, 40) and mask2d[seeds == SEED_TARGET].all()
    mask3d = np.stack([mask2d, np.zeros_like(mask2d)], axis=2)
    seeds = click_seeds(mask3d, k=2, rng=0)
    np.testing.assert_array_equal(seeded_slices(seeds), [True, False])
    with pytest.raises(ValueError, match="time axis"):
        click_seeds(mask3d, frames=[0])
    with pytest.raises(ValueError, match="slice index 5"):
        click_seeds(mask3d, slices=[5])


# --------------------------------------------------------------- validation
def test_validate_seeds_accepts_good_seeds():
    seeds = np.zeros((10, 10, 4), np.uint8)
    seeds[5, 5, 1] = SEED_TARGET
    seeds[0, 0, 2] = SEED_BACKGROUND
    assert validate_seeds(seeds, (10, 10, 4)) is None


def test_validate_seeds_rejects_a_shape_mismatch():
    seeds = np.ones((10, 10, 3), np.uint8)
    with pytest.raises(SeedsError) as err:
        validate_seeds(seeds, (10, 10, 4))
    assert str(err.value) == "seeds shape (10, 10, 3) does not match image shape (10, 10, 4)"


@pytest.mark.parametrize(
    "bad, dtype", [(3, float), (255, float), (-1, float), (0.5, float), (3, np.uint8), (255, np.uint8), (-1, np.int16)]
)
def test_validate_seeds_rejects_unknown_codes(bad, dtype):
    seeds = np.zeros((6, 6), dtype)
    seeds[1, 1] = SEED_TARGET
    seeds[2, 2] = bad
    with pytest.raises(SeedsError, match=f"found {bad}"):
        validate_seeds(seeds, (6, 6))


def test_validate_seeds_requires_a_target_dot():
    seeds = np.zeros((6, 6, 2), np.uint8)
    seeds[0, 0, 0] = SEED_BACKGROUND
    with pytest.raises(SeedsError) as err:
        validate_seeds(seeds, (6, 6, 2))
    assert str(err.value) == "no target dots: click at least one dot inside the target"


def test_seeded_slices_marks_slices_with_a_target_dot():
    seeds = np.zeros((8, 8, 3, 2), np.uint8)
    seeds[1, 1, 0, 1] = SEED_TARGET
    seeds[2, 2, 2, 0] = SEED_TARGET
    seeds[3, 3, 1, 0] = SEED_BACKGROUND  # background alone does not count
    np.testing.assert_array_equal(seeded_slices(seeds), [[False, True], [False, False], [True, False]])
    assert seeded_slices(seeds[..., 0]).shape == (3,)
