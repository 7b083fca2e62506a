import numpy as np
import pytest

from napari_sizeloss.data import (
    Box,
    as_4d,
    crop_volume,
    from_4d,
    normalisation_params,
    normalise,
    region_of_interest,
    slice_targets,
    uncrop_volume,
)


def test_as_4d_round_trip_keeps_values():
    for shape in [(5, 6), (5, 6, 3), (5, 6, 3, 2)]:
        a = np.arange(np.prod(shape)).reshape(shape)
        four = as_4d(a)
        assert four.ndim == 4
        np.testing.assert_array_equal(from_4d(four, a.ndim), a)
    with pytest.raises(ValueError):
        as_4d(np.zeros(5))


def test_normalisation_maps_percentiles_to_unit_range():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 20, size=(40, 40, 3)).astype(np.float32)
    img[0, 0, 0] = 1e6  # a hot voxel must not squash the range
    params = normalisation_params(img)
    out = normalise(img, params)
    assert out.dtype == np.float32
    assert np.isclose(np.percentile(out, 0.5), 0, atol=1e-3)
    assert np.isclose(np.percentile(out, 99.5), 1, atol=1e-3)
    assert out.max() <= 1.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.uint8])
def test_normalise_into_a_buffer_gives_the_same_values(dtype):
    rng = np.random.default_rng(3)
    img = (rng.normal(100, 40, size=(30, 20, 4)).clip(0, 250)).astype(dtype)
    img[0, 0, 0] = 250
    params = normalisation_params(img)
    expected = normalise(img, params)
    buffer = np.full(img.shape, np.nan, dtype=np.float32)
    assert normalise(img, params, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)
    same = img.astype(np.float32)
    normalise(same, params, out=same)  # in place
    np.testing.assert_array_equal(same, expected)
    assert -0.5 <= expected.min() and expected.max() <= 1.5 and expected.std() > 0.1
    with pytest.raises(ValueError, match="float32"):
        normalise(img, params, out=np.empty(img.shape, np.float64))
    with pytest.raises(ValueError, match="shape"):
        normalise(img, params, out=np.empty((30, 20), np.float32))


def _large_volumes():
    """Volumes big enough for the fast percentile path (>= 2**20 voxels), shaped like real data in ways that matter."""
    rng = np.random.default_rng(0)
    n = 2**20 + 12_345
    background = np.where(rng.random(n) < 0.3, 0.0, rng.gamma(2.0, 50.0, n))  # a zero background, ties at the low end
    return {
        "cine, a transposed view (as the widget passes it)": rng.random((25, 10, 72, 64), dtype=np.float32).T,
        "zero background": background.astype(np.float32),
        "nearly all background": np.where(rng.random(n) < 0.997, 0.0, rng.random(n)).astype(np.float32),
        "quantised intensities (many ties)": rng.integers(0, 300, n).astype(np.float32),
        "float64, heavy tail": rng.exponential(size=n),
        "already sorted": np.sort(rng.normal(size=n)).astype(np.float32),
        "constant": np.full(n, 7.0, np.float32),
        # the sample takes every 4th voxel here: it sees only zeros, and the bracket must not be trusted
        "zeros exactly where the sample looks": np.where(np.arange(n) % 4 == 0, 0.0, 1.0 + rng.random(n)).astype(np.float32),
        "other values where the sample looks": np.where(np.arange(n) % 4 == 0, rng.random(n), 10 + rng.random(n)),
    }


@pytest.mark.parametrize("name", list(_large_volumes()))
def test_normalisation_of_a_large_volume_equals_numpys_percentiles(name):
    image = _large_volumes()[name]
    assert image.size >= 2**20
    low, high = np.percentile(image, (0.5, 99.5))
    params = normalisation_params(image)
    assert params["low"] == pytest.approx(float(low), rel=1e-12, abs=1e-12)
    expected_high = float(high) if high > low else float(low) + 1.0
    assert params["high"] == pytest.approx(expected_high, rel=1e-12, abs=1e-12)


def test_normalisation_of_a_large_volume_with_nans_uses_its_finite_voxels():
    image = np.random.default_rng(1).normal(size=2**20 + 7).astype(np.float32)
    image[::1000] = np.nan
    image[5] = np.inf
    finite = image[np.isfinite(image)]
    params = normalisation_params(image)
    np.testing.assert_allclose([params["low"], params["high"]], np.percentile(finite, (0.5, 99.5)), rtol=1e-12)
    with pytest.raises(ValueError, match="no finite voxel"):
        normalisation_params(np.full(2**20, np.nan, np.float32))


def test_region_of_interest_contains_any_target_within_upper_bound():
    seeds = np.zeros((120, 100, 2, 1), np.uint8)
    seeds[60, 50, 0, 0] = 1
    seeds[64, 47, 1, 0] = 1
    upper = 400.0  # a disc of 400 px has radius ~11.3 px
    box = region_of_interest(seeds, upper, min_side=16)
    h, w = box.shape
    assert h % 8 == 0 and w % 8 == 0
    r = np.sqrt(upper / np.pi)
    # every pixel within r of either dot lies inside the box
    for cx, cy in [(60, 50), (64, 47)]:
        assert box.x0 <= cx - r and cx + r < box.x1
        assert box.y0 <= cy - r and cy + r < box.y1
    # min_side grows it symmetrically
    big = region_of_interest(seeds, upper, min_side=96)
    assert big.shape == (96, 96)
    with pytest.raises(ValueError, match="no target dots"):
        region_of_interest(np.zeros_like(seeds), upper)


def test_crop_uncrop_round_trip_with_padding_outside_image():
    rng = np.random.default_rng(1)
    vol = rng.random((30, 20, 2, 2)).astype(np.float32)
    box = Box(-4, 20, 10, 34)  # sticks out on two sides
    crop = crop_volume(vol, box, fill=-1)
    assert crop.shape == (24, 24, 2, 2)
    assert np.all(crop[:4] == -1) and np.all(crop[:, 10:] == -1)
    np.testing.assert_array_equal(crop[4:, :10], vol[0:20, 10:20])
    back = uncrop_volume(crop, box, (30, 20))
    np.testing.assert_array_equal(back[0:20, 10:20], vol[0:20, 10:20])
    assert np.all(back[20:] == 0) and np.all(back[:, :10] == 0)


def test_slice_targets_codes():
    seeds = np.array([[0, 1], [2, 0]], np.uint8)
    np.testing.assert_array_equal(slice_targets(seeds, None), [[-1, 1], [0, -1]])
    np.testing.assert_array_equal(slice_targets(seeds, np.array([[1, 0], [0, 1]])), [[1, 0], [0, 1]])
