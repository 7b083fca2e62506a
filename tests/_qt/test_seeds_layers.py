"""Seeds and prediction layer helpers: geometry, dot rasterisation, edit tracking, slice states."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_sizeloss._qt.layers import (
    SeedsShapeError,
    VolumeError,
    geometry_of,
    make_prediction_layer,
    make_seeds_layer,
    points_summary,
    rasterise_points,
    seeds_from_layer,
)
from napari_sizeloss._qt.prediction import PredictionTracker
from napari_sizeloss._qt.size_table import (
    CHECK,
    CORRECTED,
    OK,
    VIOLATION,
    classify_slices,
    slice_bounds_in_force,
    state_text,
)
from napari_sizeloss._qt.supervision import Supervision


@pytest.fixture
def image4():
    """A (T=3, Z=4, Y=20, X=24) image with NIfTI-like metadata."""
    data = np.random.default_rng(0).normal(size=(3, 4, 20, 24)).astype(np.float32)
    return Image(data, scale=(30.0, 8.0, 1.5, 1.25), metadata={"spacing": (1.25, 1.5, 8.0)})


def test_geometry_orders_and_areas(image4):
    g = geometry_of(image4)
    assert g.shape == (24, 20, 4, 3)
    assert g.layer_shape == (3, 4, 20, 24)
    assert g.unit == "mm2" and g.pixel_area_mm2 == pytest.approx(1.25 * 1.5)
    assert g.slice_area == pytest.approx(24 * 20 * 1.875)
    core = g.to_core(image4.data)
    assert core.shape == (24, 20, 4, 3) and core[5, 7, 2, 1] == image4.data[1, 2, 7, 5]
    np.testing.assert_array_equal(g.to_layer(core), image4.data)
    assert g.zt_of([2.4, 0.6, 3.0, 3.0]) == (1, 2)  # (t, z, y, x) -> (z, t), rounded


def test_geometry_refuses_what_is_not_a_volume():
    with pytest.raises(VolumeError, match="choose an image layer"):
        geometry_of(None)
    with pytest.raises(VolumeError, match="2D"):
        geometry_of(Image(np.zeros((32, 32), np.float32), name="plane"))
    with pytest.raises(VolumeError, match="RGB"):
        geometry_of(Image(np.zeros((4, 32, 32, 3), np.uint8), rgb=True))
    g3 = geometry_of(Image(np.zeros((5, 32, 40), np.float32)))
    assert g3.shape == (40, 32, 5, 1) and g3.unit == "px"  # no spacing: pixels


def test_rasterise_points_draws_discs_in_core_order(image4):
    g = geometry_of(image4)
    points = np.array([[1, 2, 10, 12], [0, 3, 0, 0], [2, 1, 5, 30]], dtype=float)  # last one: x=30 outside
    seeds, outside = rasterise_points(points, ["target", "background", "target"], g, radius=1)
    assert outside == 1
    assert seeds.shape == (24, 20, 4, 3) and seeds.dtype == np.uint8
    # disc of radius 1 around x=12, y=10 on z=2, t=1: 5 pixels
    target = np.argwhere(seeds == 1)
    assert len(target) == 5
    assert {tuple(p) for p in target} == {(12, 10, 2, 1), (11, 10, 2, 1), (13, 10, 2, 1), (12, 9, 2, 1), (12, 11, 2, 1)}
    # a background disc at the corner is cut by the border: 3 pixels
    assert np.count_nonzero(seeds == 2) == 3 and seeds[0, 0, 3, 0] == 2
    n_t, n_b, present, n_out = points_summary(points, ["target", "background", "target"], g)
    assert (n_t, n_b, n_out) == (1, 1, 1)
    assert present.shape == (4, 3) and present[2, 1] and present.sum() == 1


def test_seeds_layer_dots_and_labels_layer_seeds(image4):
    g = geometry_of(image4)
    layer = make_seeds_layer(g, radius=0)
    layer.add([[0, 1, 3, 4]])
    layer.feature_defaults["kind"] = "background"
    layer.add([[0, 1, 6, 8]])
    seeds, _ = seeds_from_layer(layer, g, radius=0)
    assert seeds[4, 3, 1, 0] == 1 and seeds[8, 6, 1, 0] == 2 and np.count_nonzero(seeds) == 2
    assert not np.allclose(layer.face_color[0], layer.face_color[1])  # kinds drawn differently
    assert layer.canvas_size_limits[0] >= 5  # a dot stays visible when zoomed out

    codes = np.zeros(g.layer_shape, np.uint8)
    codes[2, 3, 4, 5] = 1
    seeds_l, _ = seeds_from_layer(Labels(codes), g)
    assert seeds_l[5, 4, 3, 2] == 1 and np.count_nonzero(seeds_l) == 1
    with pytest.raises(SeedsShapeError, match="shape"):
        seeds_from_layer(Labels(codes[:, :2], name="wrong"), g)


@pytest.mark.parametrize("ndim", [4, 3])
def test_volume_prediction_is_laid_out_as_the_layer_and_written_unchanged(image4, ndim):
    """The worker hands the GUI a mask whose layer-order view is contiguous (no transposing copy there)."""
    from napari_sizeloss._qt.jobs import VolumePrediction

    g = geometry_of(image4 if ndim == 4 else Image(np.asarray(image4.data)[0], scale=(8.0, 1.5, 1.25)))
    X, Y, Z, T = g.shape
    mask = (np.random.default_rng(0).random((X, Y, Z, T)) > 0.5).astype(np.uint8)  # C order, as predicted
    prediction = VolumePrediction(mask=mask, sizes_px=mask.sum(axis=(0, 1)).astype(float))
    np.testing.assert_array_equal(prediction.mask, mask)
    assert g.to_layer(prediction.mask).flags.c_contiguous and not g.to_layer(mask).flags.c_contiguous
    tracker = PredictionTracker(make_prediction_layer(g), g)
    tracker.write_volume(prediction.mask)
    np.testing.assert_array_equal(g.to_core(tracker.layer.data), mask)


@pytest.mark.parametrize("ndim", [4, 3])
def test_mask_of_some_slices_is_the_whole_mask_there_and_empty_elsewhere(image4, ndim):
    g = geometry_of(image4 if ndim == 4 else Image(np.asarray(image4.data)[0], scale=(8.0, 1.5, 1.25)))
    tracker = PredictionTracker(make_prediction_layer(g), g)
    tracker.layer.data[...] = np.random.default_rng(1).integers(0, 3, g.layer_shape)  # labels 0, 1, 2
    Z, T = g.shape[2:]
    slices = np.zeros((Z, T), dtype=bool)
    slices[2, T - 1] = slices[0, 0] = True
    whole, some = (g.to_core(tracker.layer.data) > 0).astype(np.uint8), tracker.mask_core(slices)
    assert some.shape == whole.shape == g.shape and some.dtype == np.uint8
    np.testing.assert_array_equal(some[:, :, slices], whole[:, :, slices])
    assert set(np.unique(whole)) == {0, 1} and not some[:, :, ~slices].any()


def test_prediction_tracker_keeps_user_edits(image4):
    g = geometry_of(image4)
    tracker = PredictionTracker(make_prediction_layer(g), g)
    X, Y, Z, T = g.shape
    model = np.zeros((X, Y, Z, T), np.uint8)
    model[5:10, 4:8] = 1  # 20 px on every slice
    kept = tracker.write_volume(model)
    assert not kept.any() and tracker.has_prediction
    np.testing.assert_array_equal(tracker.sizes_px(), np.full((Z, T), 20.0))
    assert not tracker.edited().any()

    tracker.layer.data[1, 2, 0:2, 0:3] = 1  # the user paints 6 px on z=2, t=1
    edited = tracker.edited()
    assert edited[2, 1] and edited.sum() == 1

    model2 = np.zeros_like(model)
    kept = tracker.write_volume(model2)
    assert kept[2, 1] and kept.sum() == 1
    sizes = tracker.sizes_px()
    assert sizes[2, 1] == 26 and sizes[0, 0] == 0  # edited slice kept, others replaced
    assert not tracker.write_slice(2, 1, np.ones((X, Y), np.uint8))  # previews skip it too
    tracker.accept(edited)
    assert not tracker.edited().any()
    assert tracker.write_slice(2, 1, np.zeros((X, Y), np.uint8))


def test_supervision_tags_and_corrections():
    sup = Supervision.empty((8, 6, 5, 2))
    present = np.zeros((5, 2), bool)
    present[2, 0] = True
    skipped = sup.tag_absent(1, 3, None, True, present)
    assert skipped == [(2, 0)]
    assert sup.absent[:, 0].tolist() == [False, True, False, True, False]
    assert sup.absent[:, 1].tolist() == [False, True, True, True, False]
    sup.tag_absent(3, 3, 1, False, present)
    assert not sup.absent[3, 1] and sup.absent[3, 0]
    mask = np.zeros((8, 6, 5, 2), np.uint8)
    mask[2:4, 2:4, 4, 1] = 1
    edited = np.zeros((5, 2), bool)
    edited[4, 1] = True
    assert sup.use_corrections(mask, edited) == 1
    assert sup.corrected[4, 1] and sup.corrections[:, :, 4, 1].sum() == 4


def test_supervision_tags_any_set_of_cells_but_not_dotted_ones():
    sup = Supervision.empty((8, 6, 4, 3))
    present = np.zeros((4, 3), bool)
    present[1, 2] = True
    cells = np.zeros((4, 3), bool)
    cells[[0, 1, 3], [0, 2, 1]] = True  # scattered slice-frames, one of them dotted
    assert sup.tag_cells(cells, True, present) == [(1, 2)]
    assert sup.absent.sum() == 2 and sup.absent[0, 0] and sup.absent[3, 1]
    assert sup.tag_cells(cells, False, present) == []  # untagging never skips
    assert not sup.absent.any()
    with pytest.raises(ValueError, match="differ in shape"):
        sup.tag_cells(np.ones((3, 3), bool), True, present)


def test_slice_states_flag_violations():
    present = np.array([[True, False], [False, False], [False, False]])
    absent = np.array([[False, False], [True, False], [False, False]])
    corrected = np.array([[False, False], [False, False], [False, True]])
    lo, hi = slice_bounds_in_force(100.0, 400.0, present, absent)
    assert lo.tolist() == [[100, 0], [0, 0], [0, 0]] and hi.tolist() == [[400, 400], [0, 400], [400, 400]]
    sizes = np.array([[50.0, 500.0], [10.0, 0.0], [40.0, 0.0]])
    states = classify_slices(sizes, lo, hi, present, absent, corrected)
    assert states[0, 0] == VIOLATION  # below the lower bound on a slice with dots
    assert states[0, 1] == VIOLATION  # above the upper bound
    assert states[1, 0] == VIOLATION  # something on a slice tagged absent
    assert states[1, 1] == OK  # nothing on an untagged slice
    assert states[2, 0] == CHECK  # a small blob on an untagged slice
    assert states[2, 1] == CORRECTED
    # the tooltips say which way the bound is crossed, and that the bound may be what is wrong
    texts = {zt: state_text(int(states[zt]), sizes[zt], hi[zt], bool(absent[zt])) for zt in np.ndindex(3, 2)}
    assert texts[0, 0].startswith("smaller than the lower bound") and "lower the bound" in texts[0, 0]
    assert texts[0, 1].startswith("larger than the upper bound") and "raise the upper bound" in texts[0, 1]
    assert texts[1, 0].startswith("predicted on a slice tagged absent")
    assert texts[1, 1] == "inside the bounds" and texts[2, 1] == "corrected by hand"
