"""Tests of napari_sizeloss.metrics on hand-countable overlaps."""

import numpy as np
import pytest

from napari_sizeloss.metrics import dice, dice_2d, dice_3d


def boxes(shape, *regions):
    """A bool mask with ``True`` inside each (x0, x1, y0, y1[, index...]) box."""
    out = np.zeros(shape, dtype=bool)
    for r in regions:
        x0, x1, y0, y1, *rest = r
        out[(slice(x0, x1), slice(y0, y1), *rest)] = True
    return out


# ------------------------------------------------------------------- dice
def test_dice_hand_counted():
    pred = boxes((6, 6), (0, 2, 0, 3))  # 6 px
    gt = boxes((6, 6), (1, 3, 0, 3))  # 6 px, overlap row 1: 3 px
    assert dice(pred, gt) == pytest.approx(2 * 3 / 12)
    assert dice(pred, pred) == 1.0
    assert dice(pred, ~pred) == 0.0


def test_dice_empty_cases():
    empty = np.zeros((4, 4), dtype=bool)
    assert dice(empty, empty) == 1.0
    one = empty.copy()
    one[0, 0] = True
    assert dice(one, empty) == 0.0
    assert dice(empty, one) == 0.0


def test_dice_any_shape_and_int_arrays():
    pred = np.array([0, 1, 1, 0, 5])  # nonzero counts as foreground
    gt = np.array([0, 1, 0, 0, 1])
    assert dice(pred, gt) == pytest.approx(2 * 2 / (3 + 2))
    assert isinstance(dice(pred, gt), float)


def test_dice_label_selects_one_label():
    pred = np.array([[3, 3, 1], [0, 3, 1]])
    gt = np.array([[3, 1, 1], [3, 3, 0]])
    # label 3: pred {00, 01, 11}, gt {00, 10, 11}: overlap 2 of 3 + 3
    assert dice(pred, gt, label=3) == pytest.approx(4 / 6)
    # label 1: pred {02, 12}, gt {01, 02}: overlap 1 of 2 + 2
    assert dice(pred, gt, label=1) == pytest.approx(2 / 4)
    # without a label every nonzero value is foreground: pred 5, gt 5, overlap 4
    assert dice(pred, gt) == pytest.approx(8 / 10)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(3, 3\) does not match .* \(3, 4\)"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="does not match"):
        dice_2d(np.zeros((3, 3, 2)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="does not match"):
        dice_3d(np.zeros((3, 3, 2, 1)), np.zeros((3, 3, 2, 2)))


# ---------------------------------------------------------------- dice_2d
def test_dice_2d_per_slice():
    shape = (5, 5, 3)
    pred = boxes(shape, (0, 2, 0, 2, 0), (0, 5, 0, 1, 2))  # z0: 4 px, z1: empty, z2: 5 px
    gt = boxes(shape, (1, 3, 0, 2, 0), (0, 5, 0, 2, 2))  # z0: 4 px (overlap 2), z1: empty, z2: 10 px (overlap 5)
    got = dice_2d(pred, gt)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, [4 / 8, 1.0, 10 / 15])


def test_dice_2d_cine_shape_and_order():
    X, Y, Z, T = 4, 4, 2, 3
    pred = np.zeros((X, Y, Z, T), dtype=np.uint8)
    gt = np.zeros_like(pred)
    pred[0, 0, 1, 2] = 1  # false positive only on slice z=1, t=2
    gt[1, 1, 0, 1] = 1  # missed pixel only on z=0, t=1
    pred[2, 2, 0, 0] = gt[2, 2, 0, 0] = 1  # perfect on z=0, t=0
    got = dice_2d(pred, gt)
    assert got.shape == (Z, T)
    np.testing.assert_array_equal(got, [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])


def test_dice_2d_single_slice_and_label():
    pred = np.array([[2, 2], [0, 1]])
    gt = np.array([[2, 0], [0, 2]])
    got = dice_2d(pred, gt, label=2)
    assert got.shape == ()
    assert float(got) == pytest.approx(2 * 1 / (2 + 2))
    with pytest.raises(ValueError, match="at least 2 axes"):
        dice_2d(np.zeros(3), np.zeros(3))


# ---------------------------------------------------------------- dice_3d
def test_dice_3d_volume_differs_from_mean_of_slices():
    shape = (4, 4, 2)
    pred = boxes(shape, (0, 4, 0, 4, 0))  # 16 px on z=0, nothing on z=1
    gt = boxes(shape, (0, 4, 0, 4, 0), (0, 1, 0, 1, 1))  # 16 px on z=0 + 1 px on z=1
    got = dice_3d(pred, gt)
    assert isinstance(got, float)
    assert got == pytest.approx(2 * 16 / 33)
    assert np.mean(dice_2d(pred, gt)) == pytest.approx(0.5)


def test_dice_3d_per_frame_for_cine():
    X, Y, Z, T = 3, 3, 2, 3
    gt = np.zeros((X, Y, Z, T), dtype=np.int16)
    pred = np.zeros_like(gt)
    gt[:, :, :, 0] = 3  # frame 0: 18 px each, identical
    pred[:, :, :, 0] = 3
    gt[0, :, 0, 1] = 3  # frame 1: gt 3 px, pred 6 px covering them
    pred[:2, :, 0, 1] = 3
    pred[0, 0, 1, 2] = 1  # frame 2: gt empty, pred only a different label
    got = dice_3d(pred, gt, label=3)
    assert got.shape == (T,)
    np.testing.assert_allclose(got, [1.0, 2 * 3 / 9, 1.0])
    # without the label the label-1 pixel counts as a false positive in frame 2
    np.testing.assert_allclose(dice_3d(pred, gt), [1.0, 2 * 3 / 9, 0.0])


def test_dice_3d_2d_input_and_bad_ndim():
    pred = boxes((4, 4), (0, 2, 0, 2))
    assert dice_3d(pred, pred) == 1.0
    with pytest.raises(ValueError, match=r"\(X, Y, Z, T\)"):
        dice_3d(np.zeros((2, 2, 2, 2, 2)), np.zeros((2, 2, 2, 2, 2)))
