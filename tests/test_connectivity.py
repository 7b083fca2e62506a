"""keep_connected: the predicted regions a target dot or a corrected pixel anchors."""

import numpy as np
import pytest

from napari_sizeloss.connectivity import connectivity_structure, keep_connected, split_by_anchors


def _disc(shape, cx, cy, r):
    x, y = np.ogrid[: shape[0], : shape[1]]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _cine(X=40, Y=36, Z=4, T=5):
    """A 'cavity' disc that shrinks over slices and moves over frames, and an 'aorta' disc beside it."""
    mask = np.zeros((X, Y, Z, T), dtype=bool)
    cavity = np.zeros_like(mask)
    for z in range(Z):
        for t in range(T):
            cavity[:, :, z, t] = _disc((X, Y), 12 + t, 12, 7 - z)
            mask[:, :, z, t] = cavity[:, :, z, t] | _disc((X, Y), 30, 26, 3)
    return mask, cavity


def test_structure_is_8_connected_in_plane_and_face_connected_across_slices_and_frames():
    s = connectivity_structure(4)
    assert s.shape == (3, 3, 3, 3)
    assert s[:, :, 1, 1].all()  # the 8 in-plane neighbours and the centre
    assert s[1, 1, 0, 1] and s[1, 1, 2, 1] and s[1, 1, 1, 0] and s[1, 1, 1, 2]
    assert s.sum() == 9 + 4  # nothing diagonal across slices or frames
    assert connectivity_structure(2).all()
    with pytest.raises(ValueError, match="at least 2"):
        connectivity_structure(1)


def test_one_dot_keeps_the_cavity_of_every_slice_and_frame_and_drops_the_structure_beside_it():
    mask, cavity = _cine()
    anchors = np.zeros_like(mask)
    anchors[12, 12, 1, 2] = True  # one dot, on one slice of one frame
    kept, removed, n_removed = split_by_anchors(mask, anchors)
    np.testing.assert_array_equal(kept, cavity)
    np.testing.assert_array_equal(removed, mask & ~cavity)
    assert n_removed == 1  # the 'aorta' tube is one region through all slices and frames
    np.testing.assert_array_equal(keep_connected(mask.astype(np.uint8), anchors), cavity)


def test_a_dot_on_the_other_structure_keeps_it_too():
    mask, _ = _cine()
    anchors = np.zeros_like(mask)
    anchors[12, 12, 0, 0] = True
    anchors[30, 26, 3, 4] = True
    kept, removed, n_removed = split_by_anchors(mask, anchors)
    np.testing.assert_array_equal(kept, mask)
    assert not removed.any() and n_removed == 0


def test_regions_meet_only_diagonally_across_slices_are_separate():
    mask = np.zeros((8, 8, 2), dtype=bool)
    mask[2, 2, 0] = True
    mask[3, 3, 1] = True  # diagonal neighbour, but on the next slice
    anchors = np.zeros_like(mask)
    anchors[2, 2, 0] = True
    assert keep_connected(mask, anchors).sum() == 1
    mask[3, 3, 0] = True  # in-plane diagonal: joined, and through it the next slice's pixel
    assert keep_connected(mask, anchors).sum() == 3


def test_no_anchor_on_the_prediction_keeps_it_whole():
    mask, _ = _cine()
    anchors = np.zeros_like(mask)
    anchors[0, 0, 0, 0] = True  # a dot the network did not predict as target
    kept, removed, n = split_by_anchors(mask, anchors)
    np.testing.assert_array_equal(kept, mask)
    assert not removed.any() and n == 0
    empty = np.zeros_like(mask)
    assert not keep_connected(empty, anchors).any()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="does not match"):
        keep_connected(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)))


def test_anchors_are_target_dots_and_corrected_pixels_of_corrected_slices_only():
    from napari_sizeloss.connectivity import anchors_from

    seeds = np.zeros((6, 5, 2, 2), np.uint8)
    seeds[1, 1, 0, 0] = 1  # target dot
    seeds[2, 2, 0, 0] = 2  # background dot: not an anchor
    corrections = np.zeros(seeds.shape, np.uint8)
    corrections[3, 3, 1, 1] = 1  # painted on a corrected slice
    corrections[4, 4, 1, 0] = 1  # painted on a slice not marked corrected
    corrected = np.zeros((2, 2), bool)
    corrected[1, 1] = True
    expected = np.zeros(seeds.shape, bool)
    expected[1, 1, 0, 0] = expected[3, 3, 1, 1] = True
    np.testing.assert_array_equal(anchors_from(seeds, corrections, corrected), expected)
    np.testing.assert_array_equal(anchors_from(seeds), seeds == 1)
