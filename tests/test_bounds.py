"""Tests of napari_sizeloss.bounds: units, the paper's recipe, per-slice tables."""


import numpy as np
import pytest

from napari_sizeloss.bounds import (
    BoundsError,
    SizeBounds,
    annotation_sizes,
    bounds_from_annotation,
    slice_bounds,
    widen_to_admit,
)

ANISO = (1.25, 0.8, 6.0)  # sx, sy, sz in mm: pixel 1.0 mm^2, voxel 6.0 mm^3
ODD = (0.7, 1.9, 8.0)  # pixel 1.33 mm^2, voxel 10.64 mm^3


# ------------------------------------------------------------- validation
def test_valid_bounds_are_stored_as_floats():
    b = SizeBounds(98, 1723)
    assert (b.lower, b.upper, b.unit) == (98.0, 1723.0, "px")
    assert isinstance(b.lower, float) and isinstance(b.upper, float)
    assert SizeBounds(np.int64(3), np.float32(4.5), "mm2").upper == 4.5
    assert SizeBounds(5, 5).lower == 5.0  # equal bounds are allowed (corrected slices)


def test_ml_is_stored_as_mm3():
    b = SizeBounds(0.12, 0.25, unit="ml")
    assert b.unit == "mm3"
    assert (b.lower, b.upper) == pytest.approx((120.0, 250.0))
    assert SizeBounds(1, 2, unit="mL").upper == pytest.approx(2000.0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((120, 80), "lower bound 120 px is above the upper bound 80 px"),
        ((-1, 80), "lower bound -1 px is negative"),
        ((float("nan"), 80), "lower bound must be finite"),
        ((0, float("inf")), "upper bound must be finite"),
        (("10", 80), "lower bound must be a number"),
        ((True, 80), "lower bound must be a number"),
        ((1, 2, "cm2"), "unknown size unit 'cm2'"),
        ((1, 2, None), "unknown size unit None"),
        ((300, 200, "mm2"), "lower bound 300 mm\\^2 is above the upper bound 200 mm\\^2"),
    ],
)
def test_invalid_bounds_are_refused(args, message):
    with pytest.raises(BoundsError, match=message):
        SizeBounds(*args)


def test_bounds_error_is_a_value_error():
    assert issubclass(BoundsError, ValueError)


# ------------------------------------------------------------ conversions
def test_mm2_to_pixels_divides_by_pixel_area():
    b = SizeBounds(13.3, 266.0, "mm2").to_pixels(ODD)
    assert b.unit == "px"
    assert b.lower == pytest.approx(13.3 / (0.7 * 1.9))
    assert b.upper == pytest.approx(266.0 / (0.7 * 1.9))
    # only the in-plane spacing matters for areas
    assert SizeBounds(13.3, 266.0, "mm2").to_pixels(ODD[:2]) == b


def test_px_to_mm2_multiplies_by_pixel_area():
    b = SizeBounds(10, 200).to_mm2((2.0, 0.5))
    assert (b.lower, b.upper, b.unit) == (10.0, 200.0, "mm2")  # 1 mm^2 per pixel
    b = SizeBounds(10, 200).to_mm2(ODD)
    assert b.lower == pytest.approx(13.3) and b.upper == pytest.approx(266.0)


def test_volume_conversions_use_all_three_spacings():
    b = SizeBounds(100, 400, "vox").to_mm3(ODD)
    assert b.unit == "mm3"
    assert b.lower == pytest.approx(100 * 0.7 * 1.9 * 8.0)
    ml = SizeBounds(0.5, 1.0, "ml")
    vox = ml.to_pixels(ANISO)
    assert vox.unit == "vox"
    assert (vox.lower, vox.upper) == pytest.approx((500 / 6.0, 1000 / 6.0))


@pytest.mark.parametrize("spacing", [ANISO, ODD, (0.3, 2.7, 1.1)])
def test_round_trips(spacing):
    area = SizeBounds(98, 1723)
    back = area.to_mm2(spacing).to_pixels(spacing)
    assert (back.lower, back.upper) == pytest.approx((98, 1723))
    vol = SizeBounds(7.5, 31.25, "mm3")
    back = vol.to_pixels(spacing).to_mm3(spacing)
    assert back.unit == "mm3" and (back.lower, back.upper) == pytest.approx((7.5, 31.25))
    via_unit = area.to_unit("mm2", spacing).to_unit("px", spacing)
    assert via_unit.unit == "px" and (via_unit.lower, via_unit.upper) == pytest.approx((98, 1723))


def test_identity_conversions_need_no_spacing():
    px = SizeBounds(1, 2)
    assert px.to_pixels() is px and px.to_pixels(None) is px
    mm2 = SizeBounds(1, 2, "mm2")
    assert mm2.to_mm2() is mm2 and mm2.to_unit("mm2") is mm2
    vox = SizeBounds(1, 2, "vox")
    assert vox.to_pixels() is vox
    mm3 = SizeBounds(1, 2, "mm3")
    assert mm3.to_mm3() is mm3 and mm3.to_unit("ml") is mm3


def test_to_unit_dispatches():
    b = SizeBounds(10, 20)
    assert b.to_unit("mm2", ODD).upper == pytest.approx(20 * 0.7 * 1.9)
    assert SizeBounds(1, 2, "mm3").to_unit("vox", ODD).upper == pytest.approx(2 / (0.7 * 1.9 * 8.0))
    assert SizeBounds(1, 2, "vox").to_unit("ml", ODD).upper == pytest.approx(2 * 0.7 * 1.9 * 8.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: SizeBounds(1, 2, "mm2").to_pixels(), "needs the voxel spacing"),
        (lambda: SizeBounds(1, 2).to_mm2(None), "needs the voxel spacing"),
        (lambda: SizeBounds(1, 2).to_unit("mm2"), "needs the voxel spacing"),
        (lambda: SizeBounds(1, 2, "mm3").to_pixels((1.0, 1.0)), "needs 3 spacing values"),
        (lambda: SizeBounds(1, 2, "mm2").to_pixels((1.0, 0.0)), r"spacing \(1.0, 0.0\) must be finite and > 0"),
        (lambda: SizeBounds(1, 2, "mm2").to_pixels((1.0, float("nan"))), "must be finite and > 0"),
        (lambda: SizeBounds(1, 2, "mm2").to_pixels("ab"), "spacing must be a sequence of numbers"),
        (lambda: SizeBounds(1, 2).to_mm3(ODD), "cannot express slice-area bounds"),
        (lambda: SizeBounds(1, 2, "vox").to_mm2(ODD), "cannot express volume bounds"),
        (lambda: SizeBounds(1, 2).to_unit("vox", ODD), "cannot convert slice-area bounds"),
        (lambda: SizeBounds(1, 2, "mm3").to_unit("px", ODD), "cannot convert volume bounds"),
        (lambda: SizeBounds(1, 2).to_unit("inch"), "unknown size unit"),
    ],
)
def test_conversion_errors(call, message):
    with pytest.raises(BoundsError, match=message):
        call()


def test_scaled_multiplies_grid_bounds_by_the_area_factor():
    # 256x256 -> 128x128 is f = 0.5 per axis, area factor 0.25
    b = SizeBounds(98, 1723).scaled(0.25)
    assert (b.lower, b.upper, b.unit) == (24.5, 430.75, "px")
    assert SizeBounds(8, 16, "vox").scaled(0.125).upper == 2.0
    with pytest.raises(BoundsError, match="do not change when the image is resized"):
        SizeBounds(1, 2, "mm2").scaled(4.0)
    with pytest.raises(BoundsError, match="must be > 0"):
        SizeBounds(1, 2).scaled(0.0)
    with pytest.raises(BoundsError, match="must be finite"):
        SizeBounds(1, 2).scaled(float("inf"))


# ---------------------------------------------------------------- fitting
def test_check_fits_slice_area():
    SizeBounds(10, 65536).check_fits((256, 256))  # exactly the area: fine
    with pytest.raises(BoundsError, match="upper bound 70000 px exceeds the slice area 65536 px"):
        SizeBounds(10, 70000).check_fits((256, 256))
    SizeBounds(10, 100).check_fits((10, 10, 4, 3))  # trailing axes are ignored


def test_check_fits_converts_mm2_with_spacing():
    # 32 x 32 pixels of 2 mm^2: 2048 mm^2 in all
    SizeBounds(10, 2048, "mm2").check_fits((32, 32), spacing=(2.0, 1.0))
    with pytest.raises(BoundsError, match=r"upper bound 2100 mm\^2 \(1050 px\) exceeds the slice area 1024 px"):
        SizeBounds(10, 2100, "mm2").check_fits((32, 32), spacing=(2.0, 1.0))
    with pytest.raises(BoundsError, match="needs the voxel spacing"):
        SizeBounds(10, 20, "mm2").check_fits((32, 32))


def test_check_fits_volume():
    SizeBounds(1, 4000, "vox").check_fits((10, 20, 20))
    with pytest.raises(BoundsError, match="exceeds the volume 4000 vox"):
        SizeBounds(1, 4001, "vox").check_fits((10, 20, 20))
    with pytest.raises(BoundsError, match="fewer than 3 axes"):
        SizeBounds(1, 4, "vox").check_fits((10, 20))


# ----------------------------------------------------------- plain values
def test_dict_round_trip_with_plain_values():
    for b in (SizeBounds(98, 1723), SizeBounds(1.5, 2.25, "mm2"), SizeBounds(0.1, 0.2, "ml")):
        d = b.as_dict()
        assert set(d) == {"lower", "upper", "unit"}
        assert type(d["lower"]) is float and type(d["upper"]) is float and type(d["unit"]) is str
        assert SizeBounds.from_dict(d) == b
    assert SizeBounds.from_dict({"lower": 1, "upper": 2}).unit == "px"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lower": 1}, "lack upper"),
        ({"lower": 1, "upper": 2, "colour": "red"}, "unknown keys colour"),
        ([1, 2], "must be a dict"),
        ({"lower": 3, "upper": 2}, "is above the upper bound"),
    ],
)
def test_from_dict_errors(data, message):
    with pytest.raises(BoundsError, match=message):
        SizeBounds.from_dict(data)


def test_describe():
    b = SizeBounds(98, 1723)
    assert str(b) == "98-1723 px" == b.describe()
    # 1.55 mm^2 per pixel: 98 * 1.55 = 151.9, 1723 * 1.55 = 2670.65
    text = b.describe(spacing=(1.25, 1.24))
    assert text.startswith("98-1723 px (151.9-")
    assert text.endswith(" mm^2)")
    assert SizeBounds(107.8, 1550.7).describe() == "107.8-1550.7 px"
    assert SizeBounds(100, 200, "mm2").describe((2.0, 1.0)) == "100-200 mm^2 (50.0-100.0 px)"
    assert SizeBounds(10, 20, "vox").describe((1.0, 1.0, 2.0)) == "10-20 vox (20.0-40.0 mm^3)"


# ---------------------------------------------------------- paper recipe
def disc(shape, centre, radius) -> np.ndarray:
    x, y = np.mgrid[: shape[0], : shape[1]]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def disc_volume():
    """(X, Y, Z, T) labels: label 3 discs of different radii, label 1 bigger, empty slices."""
    X, Y, Z, T = 40, 36, 5, 2
    labels = np.zeros((X, Y, Z, T), dtype=np.int16)
    radii = {(0, 0): 3, (1, 0): 7, (2, 0): 5, (1, 1): 9, (2, 1): 2, (3, 1): 6}
    for (z, t), r in radii.items():
        labels[..., z, t][disc((X, Y), (20, 17), r)] = 3
    # another label, larger than every disc, and on slices without label 3
    labels[:3, :, 0, 0] = 1
    labels[:, :, 4, 0] = 1
    return labels, radii


def count_area(mask2d: np.ndarray) -> int:
    return int(sum(1 for v in mask2d.ravel() if v))


def test_annotation_sizes_counts_each_slice():
    labels, radii = disc_volume()
    sizes = annotation_sizes(labels, 3)
    assert sizes.shape == (5, 2)
    for z in range(5):
        for t in range(2):
            expected = count_area(disc((40, 36), (20, 17), radii[(z, t)])) if (z, t) in radii else 0
            assert sizes[z, t] == expected
    assert annotation_sizes(labels[..., 0], 3).shape == (5, 1)
    assert annotation_sizes(labels[:, :, 1, 1], 3).shape == (1, 1)


def test_recipe_on_discs():
    labels, radii = disc_volume()
    areas = [count_area(disc((40, 36), (20, 17), r)) for r in radii.values()]
    b = bounds_from_annotation(labels, 3)
    assert b.unit == "px"
    assert b.lower == pytest.approx(1.1 * min(areas))  # radius 2: 13 px, not 0 of empty slices
    assert b.upper == pytest.approx(0.9 * max(areas))  # radius 9 in frame t=1, not label 1
    assert min(areas) == 13


def test_recipe_ignores_empty_slices_and_other_labels_on_3d_and_2d():
    labels, radii = disc_volume()
    frame0 = labels[..., 0]  # (X, Y, Z): radii 3, 7, 5; slices 3, 4 empty of label 3
    a3, a7 = count_area(disc((40, 36), (20, 17), 3)), count_area(disc((40, 36), (20, 17), 7))
    b = bounds_from_annotation(frame0, 3, spacing=(1.0, 1.0, 8.0))
    assert (b.lower, b.upper) == pytest.approx((1.1 * a3, 0.9 * a7))
    b1 = bounds_from_annotation(frame0, 1, lower_factor=1.0, upper_factor=1.0)
    assert (b1.lower, b1.upper) == (float(3 * 36), float(40 * 36))


def test_recipe_custom_factors():
    labels, radii = disc_volume()
    areas = [count_area(disc((40, 36), (20, 17), r)) for r in radii.values()]
    b = bounds_from_annotation(labels, 3, lower_factor=0.5, upper_factor=2.0)
    assert (b.lower, b.upper) == pytest.approx((0.5 * min(areas), 2.0 * max(areas)))


def test_recipe_errors():
    labels, _ = disc_volume()
    with pytest.raises(BoundsError, match="label 2 does not occur"):
        bounds_from_annotation(labels, 2)
    same = np.zeros((20, 20, 3), dtype=np.uint8)
    same[5:10, 5:10, :] = 1  # every slice 25 px: 27.5 > 22.5
    with pytest.raises(BoundsError, match=r"27\.5 px is above .* 22\.5 px"):
        bounds_from_annotation(same, 1)
    with pytest.raises(BoundsError, match="factors must be > 0"):
        bounds_from_annotation(labels, 3, lower_factor=0.0)
    with pytest.raises(BoundsError, match="upper factor must be finite"):
        bounds_from_annotation(labels, 3, upper_factor=float("nan"))
    with pytest.raises(BoundsError, match="labels must be"):
        bounds_from_annotation(labels[0, 0, 0], 3)
    with pytest.raises(BoundsError, match="spacing"):
        bounds_from_annotation(labels, 3, spacing=(1.0, -1.0, 1.0))


# ------------------------------------------------------- per-slice table
def test_slice_bounds_table():
    b = SizeBounds(20, 300)
    present = np.array([[True, False], [False, False], [True, True]])
    absent = np.array([[False, True], [False, False], [False, False]])
    lower, upper = slice_bounds(b, present, absent)
    assert lower.dtype == upper.dtype == np.float32 and lower.shape == (3, 2)
    np.testing.assert_array_equal(lower, [[20, 0], [0, 0], [20, 20]])
    np.testing.assert_array_equal(upper, [[300, 0], [300, 300], [300, 300]])
    lower1, upper1 = slice_bounds(b, present, absent, one_bound=True)
    np.testing.assert_array_equal(lower1, np.zeros((3, 2)))
    np.testing.assert_array_equal(upper1, upper)


def test_slice_bounds_conflict_names_the_slice():
    present = np.zeros((5, 2), dtype=bool)
    absent = np.zeros((5, 2), dtype=bool)
    present[3, 0] = absent[3, 0] = True
    with pytest.raises(BoundsError, match="slice z=3, t=0 has target dots but is tagged target-absent"):
        slice_bounds(SizeBounds(1, 2), present, absent)
    with pytest.raises(BoundsError, match="slice z=2 has"):
        slice_bounds(SizeBounds(1, 2), np.array([0, 0, 1], bool), np.array([0, 0, 1], bool))


def test_slice_bounds_errors():
    with pytest.raises(BoundsError, match="needs bounds in px; got mm2"):
        slice_bounds(SizeBounds(1, 2, "mm2"), np.zeros((2, 1), bool), np.zeros((2, 1), bool))
    with pytest.raises(BoundsError, match="differ in shape"):
        slice_bounds(SizeBounds(1, 2), np.zeros((2, 1), bool), np.zeros((2, 2), bool))
    with pytest.raises(BoundsError, match="needs a SizeBounds"):
        slice_bounds((1, 2), np.zeros((2, 1), bool), np.zeros((2, 1), bool))


# ------------------------------------------------------- widen_to_admit
def test_widen_raises_the_upper_bound_to_the_largest_corrected_area():
    bounds = SizeBounds(120, 676)
    widened = widen_to_admit(bounds, [911, 938, 400])
    assert (widened.lower, widened.upper, widened.unit) == (120, 938, "px")


def test_widen_lowers_the_lower_bound_but_ignores_empty_corrections():
    widened = widen_to_admit(SizeBounds(120, 676), [0, 95, 300])
    assert (widened.lower, widened.upper) == (95, 676)
    # an empty correction says "no target here": the lower bound stays
    assert widen_to_admit(SizeBounds(120, 676), [0, 0]) == SizeBounds(120, 676)


def test_widen_returns_the_same_bounds_when_every_area_fits():
    bounds = SizeBounds(120, 676)
    assert widen_to_admit(bounds, [120, 500, 676]) is bounds
    assert widen_to_admit(bounds, []) is bounds


def test_widen_keeps_mm2_bounds_in_mm2():
    # 1.5 x 2.0 mm pixels: 3 mm^2 each; 400 px = 1200 mm^2 is above 900 mm^2
    widened = widen_to_admit(SizeBounds(300, 900, "mm2"), [400, 150], spacing=(1.5, 2.0))
    assert widened.unit == "mm2"
    assert widened.lower == pytest.approx(300) and widened.upper == pytest.approx(1200)


def test_widen_keeps_the_bound_it_does_not_move_exactly():
    # 0.7 x 1.22 mm pixels: an mm2 -> px -> mm2 round trip changes 300.1 in its last bits
    spacing = (0.7, 1.22)
    bounds = SizeBounds(300.1, 900.0, "mm2")
    assert bounds.to_pixels(spacing).to_mm2(spacing).lower != 300.1
    widened = widen_to_admit(bounds, [2000], spacing=spacing)
    assert widened.lower == 300.1 and widened.upper == pytest.approx(2000 * 0.7 * 1.22)
    lowered = widen_to_admit(SizeBounds(300.1, 900.0, "mm2"), [50], spacing=spacing)
    assert lowered.upper == 900.0 and lowered.lower == pytest.approx(50 * 0.7 * 1.22)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: widen_to_admit(SizeBounds(1, 2, "mm3"), [5]), "volume bounds"),
        (lambda: widen_to_admit(SizeBounds(1, 2), [5, float("nan")]), "finite"),
        (lambda: widen_to_admit(SizeBounds(1, 2), [-3]), "finite and >= 0"),
        (lambda: widen_to_admit(SizeBounds(1, 2, "mm2"), [5]), "spacing"),
        (lambda: widen_to_admit((1, 2), [5]), "SizeBounds"),
    ],
)
def test_widen_errors(call, message):
    with pytest.raises(BoundsError, match=message):
        call()
