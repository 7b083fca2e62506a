"""The napari writer: labels back onto the source grid, refusals, fallback geometry."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from napari_sizeloss._reader import read_nifti
from napari_sizeloss._writer import write_labels
from napari_sizeloss.nifti import NiftiError

from test_reader import oblique_affine, write_nifti


def _labels_like(layer_shape, rng) -> np.ndarray:
    labels = np.zeros(layer_shape, dtype=np.uint8)
    flat = labels.reshape(-1)
    flat[rng.choice(flat.size, size=flat.size // 5, replace=False)] = rng.integers(1, 4, size=flat.size // 5)
    return labels


@pytest.mark.parametrize("shape", [(9, 7, 5, 4), (9, 7, 5)], ids=["4d", "3d"])
def test_labels_written_on_the_source_grid(tmp_path, rng, shape):
    affine = oblique_affine((1.25, 1.5, 8.0))
    source = write_nifti(
        tmp_path / "image.nii.gz", rng.normal(size=shape).astype(np.float32), affine, frame_time=33.0
    )
    [(image, kwargs, _)] = read_nifti(str(source))
    labels = _labels_like(image.shape, rng)  # napari order, as a labels layer holds it

    [written] = write_labels(str(tmp_path / "mask.nii.gz"), labels, {"name": "mask", **kwargs})

    out = nib.load(written)
    src = nib.load(str(source))
    assert out.shape == shape  # spatial shape of the source, NIfTI order
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
    np.testing.assert_allclose(out.header.get_sform(), src.header.get_sform(), atol=1e-6)
    np.testing.assert_allclose(out.header.get_qform(), src.header.get_qform(), atol=1e-6)
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    np.testing.assert_allclose(out.header.get_zooms(), src.header.get_zooms(), rtol=1e-6)
    assert out.get_data_dtype().kind == "u"
    disk = np.asarray(out.dataobj)
    for idx in np.argwhere(labels)[:20]:  # napari (t, z, y, x) -> disk (x, y, z, t)
        assert disk[tuple(idx[::-1])] == labels[tuple(idx)]
    assert np.count_nonzero(disk) == np.count_nonzero(labels)


def test_suffix_added_and_source_never_overwritten(tmp_path, rng):
    source = write_nifti(tmp_path / "image.nii", rng.normal(size=(6, 5, 3)).astype(np.float32), np.eye(4))
    before = source.read_bytes()
    [(image, kwargs, _)] = read_nifti(str(source))
    labels = np.ones(image.shape, dtype=np.uint8)

    [written] = write_labels(str(tmp_path / "mask"), labels, kwargs)
    assert written.endswith("mask.nii.gz") and os.path.exists(written)

    with pytest.raises(NiftiError, match="source image"):
        write_labels(str(source), labels, kwargs)
    assert source.read_bytes() == before


def test_unwritable_path_and_wrong_shape_are_clear_errors(tmp_path, rng):
    source = write_nifti(tmp_path / "image.nii.gz", rng.normal(size=(6, 5, 3, 2)).astype(np.float32), np.eye(4))
    [(image, kwargs, _)] = read_nifti(str(source))
    labels = np.zeros(image.shape, dtype=np.uint8)

    with pytest.raises(NiftiError, match="does not exist"):
        write_labels(str(tmp_path / "no" / "such" / "dir" / "mask.nii.gz"), labels, kwargs)

    with pytest.raises(NiftiError, match=r"\(6, 5, 3\).*\(6, 5, 3, 2\)|shape"):
        write_labels(str(tmp_path / "mask.nii.gz"), labels[0], kwargs)
    assert not (tmp_path / "mask.nii.gz").exists()

    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(NiftiError, match="permission"):
            write_labels(str(locked / "mask.nii.gz"), labels, kwargs)


def test_layer_without_nifti_metadata_gets_a_scale_affine(tmp_path):
    labels = np.zeros((2, 3, 4, 5), dtype=np.uint8)  # (T, Z, Y, X)
    labels[1, 2, 3, 4] = 1
    meta = {"name": "new labels", "scale": (40.0, 8.0, 1.5, 1.25), "translate": (0.0, 16.0, -3.0, 2.0), "metadata": {}}
    with pytest.warns(UserWarning, match="no NIfTI geometry"):
        [written] = write_labels(str(tmp_path / "plain.nii.gz"), labels, meta)
    out = nib.load(written)
    assert out.shape == (5, 4, 3, 2)
    np.testing.assert_allclose(np.diag(out.affine)[:3], (1.25, 1.5, 8.0))
    np.testing.assert_allclose(out.affine[:3, 3], (2.0, -3.0, 16.0))
    assert np.asarray(out.dataobj)[4, 3, 2, 1] == 1


def test_writer_reached_through_the_manifest(tmp_path, rng):
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManager.instance().discover()
    source = write_nifti(
        tmp_path / "image.nii.gz", rng.normal(size=(6, 5, 3, 2)).astype(np.float32), oblique_affine((1, 2, 3))
    )
    [(image, kwargs, _)] = read_nifti(str(source))
    labels = _labels_like(image.shape, rng)
    written = npe2.write(str(tmp_path / "via_npe2.nii.gz"), [(labels, kwargs, "labels")], plugin_name="napari-sizeloss")
    out = nib.load(written[0])
    np.testing.assert_allclose(out.affine, nib.load(str(source)).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.dataobj), labels.T)
