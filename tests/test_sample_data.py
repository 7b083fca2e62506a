"""The ``cine_phantom`` sample data: image + ground truth on the phantom's grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_sizeloss._sample_data import cine_phantom_layers, make_cine_phantom_sample
from napari_sizeloss._writer import write_labels
from napari_sizeloss.phantom import DEFAULT_SHAPE, LABEL_LV_CAVITY, make_cine_phantom


def test_phantom_layers_match_the_phantom_in_napari_order():
    shape = (40, 36, 3, 4)
    phantom = make_cine_phantom(shape, seed=3)
    (image, img_kw, img_type), (labels, lab_kw, lab_type) = cine_phantom_layers(shape, seed=3)
    assert (img_type, lab_type) == ("image", "labels")
    assert image.shape == labels.shape == (4, 3, 36, 40)
    np.testing.assert_array_equal(image, phantom.image.transpose(3, 2, 1, 0))
    np.testing.assert_array_equal(labels, phantom.labels.transpose(3, 2, 1, 0))
    sx, sy, sz = phantom.spacing
    for kw in (img_kw, lab_kw):
        np.testing.assert_allclose(kw["scale"], (phantom.frame_time_ms, sz, sy, sx), rtol=1e-5)
        np.testing.assert_allclose(kw["metadata"]["affine"], phantom.affine)
        assert kw["metadata"]["nifti_shape"] == shape
        assert kw["metadata"]["source_path"] is None
    assert lab_kw["metadata"]["target_label"] == LABEL_LV_CAVITY
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_ground_truth_written_back_lines_up_with_the_phantom(tmp_path):
    shape = (32, 28, 2, 3)
    phantom = make_cine_phantom(shape, seed=1)
    _, (labels, lab_kw, _) = cine_phantom_layers(shape, seed=1)
    [written] = write_labels(str(tmp_path / "gt.nii.gz"), labels, lab_kw)
    out = nib.load(written)
    np.testing.assert_allclose(out.affine, phantom.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.dataobj), phantom.labels)


def test_sample_hook_gives_the_default_phantom_through_the_manifest():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    contribution = next(
        s for s in pm.iter_sample_data() if s[0] == "napari-sizeloss"
    )[1][0]
    assert contribution.key == "cine_phantom"
    assert contribution.display_name == "Cine MR phantom"
    layers = make_cine_phantom_sample()
    X, Y, Z, T = DEFAULT_SHAPE
    assert [ld[0].shape for ld in layers] == [(T, Z, Y, X)] * 2
    assert [ld[2] for ld in layers] == ["image", "labels"]
