"""The napari reader: axis order, scale, metadata, labels detection, refusals."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_sizeloss._reader import napari_get_reader, read_nifti, to_napari_order, to_nifti_order


def oblique_affine(spacing, origin=(-80.0, 35.5, 12.25), angles=(0.3, -0.2, 0.5)) -> np.ndarray:
    """A rotated, anisotropic voxel-to-world matrix (mm)."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def write_nifti(path, data, affine, *, frame_time=None, time_unit="msec", klass=nib.Nifti1Image):
    img = klass(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm", time_unit)
    if data.ndim == 4:
        img.header.set_zooms(tuple(np.linalg.norm(affine[:3, :3], axis=0)) + (frame_time or 0.0,))
    nib.save(img, str(path))
    return path


@pytest.fixture
def cine_file(tmp_path, rng):
    data = rng.normal(300, 50, size=(9, 7, 5, 4)).astype(np.float32)
    affine = oblique_affine((1.25, 1.5, 8.0))
    return write_nifti(tmp_path / "cine.nii.gz", data, affine, frame_time=35.0), data, affine


def test_4d_file_opens_in_napari_order_with_scale_and_geometry(cine_file):
    path, data, affine = cine_file
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(layer, kwargs, layer_type)] = reader(str(path))
    assert layer_type == "image"
    assert layer.shape == (4, 5, 7, 9)  # (T, Z, Y, X)
    # voxel (x, y, z, t) on disk is layer[t, z, y, x]
    for x, y, z, t in [(0, 0, 0, 0), (8, 1, 3, 2), (4, 6, 4, 3)]:
        assert layer[t, z, y, x] == data[x, y, z, t]
    np.testing.assert_allclose(kwargs["scale"], (35.0, 8.0, 1.5, 1.25), rtol=1e-6)
    assert kwargs["axis_labels"] == ("t", "z", "y", "x")
    meta = kwargs["metadata"]
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-5)
    assert meta["nifti_shape"] == (9, 7, 5, 4)
    assert meta["axes"] == "TZYX"
    assert meta["source_path"] == str(path.resolve())
    assert int(meta["header"]["sform_code"]) == 2
    low, high = kwargs["contrast_limits"]
    assert data.min() < low < high < data.max()


def test_3d_file_gives_zyx_and_frame_time_in_seconds_is_converted(tmp_path, rng):
    data3 = rng.integers(0, 2000, size=(6, 5, 4)).astype(np.int16)
    affine = oblique_affine((0.9, 1.1, 5.0))
    p3 = write_nifti(tmp_path / "vol.nii", data3, affine)
    [(layer, kwargs, layer_type)] = napari_get_reader(str(p3))(str(p3))
    assert layer_type == "image"  # int16 with thousands of values is an image, not labels
    assert layer.shape == (4, 5, 6)
    assert layer[3, 4, 5] == data3[5, 4, 3]
    np.testing.assert_allclose(kwargs["scale"], (5.0, 1.1, 0.9), rtol=1e-6)

    data4 = rng.normal(size=(6, 5, 4, 3)).astype(np.float32)
    p4 = write_nifti(tmp_path / "sec.nii.gz", data4, affine, frame_time=0.04, time_unit="sec")
    [(_, kwargs4, _)] = read_nifti(str(p4))
    assert kwargs4["scale"][0] == pytest.approx(40.0)  # 0.04 s -> 40 ms
    assert kwargs4["metadata"]["frame_time_ms"] == pytest.approx(40.0)


def test_2d_and_nifti2_files(tmp_path, rng):
    data = rng.normal(size=(8, 6)).astype(np.float32)
    affine = oblique_affine((0.7, 0.8, 1.0))
    path = write_nifti(tmp_path / "plane.nii", data, affine, klass=nib.Nifti2Image)
    [(layer, kwargs, _)] = napari_get_reader(str(path))(str(path))
    assert layer.shape == (6, 8)
    assert layer[5, 7] == data[7, 5]
    np.testing.assert_allclose(kwargs["scale"], (0.8, 0.7), rtol=1e-6)
    assert kwargs["metadata"]["header"].sizeof_hdr == 540  # NIfTI-2 header kept


def test_integer_mask_opens_as_labels(tmp_path):
    mask = np.zeros((10, 8, 3, 2), dtype=np.int16)
    mask[2:5, 3:6, 1, 0] = 3
    mask[6:8, 1:3, 2, 1] = 1
    path = write_nifti(tmp_path / "gt.nii.gz", mask, oblique_affine((1.0, 1.0, 6.0)), frame_time=30.0)
    [(layer, kwargs, layer_type)] = napari_get_reader(str(path))(str(path))
    assert layer_type == "labels"
    assert layer.dtype == np.uint8
    assert layer.shape == (2, 3, 8, 10)
    np.testing.assert_array_equal(to_nifti_order(layer), mask)
    assert "colormap" not in kwargs


def test_reader_declines_what_it_cannot_read(tmp_path, rng):
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert napari_get_reader(str(png)) is None
    assert napari_get_reader(str(tmp_path / "missing.nii.gz")) is None
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header at all" * 10))
    assert napari_get_reader(str(garbage)) is None
    text = tmp_path / "notes.nii"
    text.write_text("hello")
    assert napari_get_reader(str(text)) is None
    five_d = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2, 2), np.float32), np.eye(4)), str(five_d))
    assert napari_get_reader(str(five_d)) is None
    # a list with one unreadable file is declined as a whole
    good = write_nifti(tmp_path / "good.nii.gz", np.zeros((4, 4, 2), np.float32), np.eye(4))
    assert napari_get_reader([str(good), str(text)]) is None
    assert napari_get_reader([str(good)]) is not None


def test_axis_order_helpers_are_inverse(rng):
    arr = rng.normal(size=(5, 4, 3, 2))
    napari = to_napari_order(arr)
    assert napari.shape == (2, 3, 4, 5)
    assert np.shares_memory(napari, arr)  # a view, no copy of the volume
    np.testing.assert_array_equal(to_nifti_order(napari), arr)


def test_reader_reached_through_the_manifest(cine_file):
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManager.instance().discover()
    path, data, _ = cine_file
    [(layer, kwargs, layer_type)] = npe2.read([str(path)], stack=False, plugin_name="napari-sizeloss")
    assert layer_type == "image"
    np.testing.assert_array_equal(to_nifti_order(np.asarray(layer)), data)
