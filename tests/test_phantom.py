"""The synthetic cine phantom: anatomy, motion, signal, noise, geometry, determinism."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sizeloss.phantom import CinePhantom, make_cine_phantom, make_cohort

BG, RV, MYO, LV = 0, 1, 2, 3
SMALL = (96, 84, 10, 8)
EIGHT = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def default():
    return make_cine_phantom(seed=0)


@pytest.fixture(scope="module")
def clean():
    return make_cine_phantom(seed=0, noise=0, bias=0)


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(4, seed=10, shape=SMALL)


def lv_areas(ph):
    """LV cavity area (px) per slice and frame, (Z, T)."""
    return (ph.labels == LV).sum(axis=(0, 1))


# ----------------------------------------------------------- arrays, labels
def test_default_shapes_dtypes_and_labels(default):
    assert isinstance(default, CinePhantom)
    assert default.image.shape == default.labels.shape == (192, 168, 10, 20)
    assert default.image.dtype == np.float32 and default.labels.dtype == np.uint8
    assert set(np.unique(default.labels)) == {BG, RV, MYO, LV}
    assert default.spacing == pytest.approx((1.5625, 1.5625, 8.0))
    assert default.affine.shape == (4, 4) and default.affine.dtype == np.float64
    assert default.ed_frame == 0
    assert 0.3 * 20 <= default.es_frame <= 0.4 * 20
    assert 30.0 < default.frame_time_ms < 60.0  # RR of 750-1100 ms over 20 frames


def test_other_shapes_show_the_same_anatomy(clean):
    small = make_cine_phantom((96, 84, 5, 6), seed=0, noise=0, bias=0)
    assert small.spacing == pytest.approx((3.125, 3.125, 16.0))
    # the ED cavity volume in mL agrees with the default resolution (sampling aside)
    ml = [(p.labels[..., 0] == LV).sum() * np.prod(p.spacing) / 1000 for p in (clean, small)]
    assert ml[1] == pytest.approx(ml[0], rel=0.2)
    assert 60 < ml[0] < 250  # a realistic LV end-diastolic volume
    explicit = make_cine_phantom((64, 64, 4, 2), seed=0, spacing=(2.0, 2.5, 10.0))
    assert explicit.spacing == (2.0, 2.5, 10.0)
    assert np.linalg.norm(explicit.affine[:3, :3], axis=0) == pytest.approx([2.0, 2.5, 10.0])


@pytest.mark.parametrize("shape", [(4, 40, 3, 2), (48, 40, 3), (48, 40, 0, 2), "abc"])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="shape"):
        make_cine_phantom(shape)


# ------------------------------------------------------------------ anatomy
def test_lv_cavity_shrinks_from_base_to_apex(cohort):
    for ph in cohort:
        areas = lv_areas(ph)
        Z = areas.shape[0]
        for t in (ph.ed_frame, ph.es_frame):
            assert areas[1, t] > areas[Z - 2, t]
            present = np.flatnonzero(areas[:, t])
            # the target occupies a contiguous run of slices from the base
            np.testing.assert_array_equal(present, np.arange(len(present)))
        # at ED, no step toward the apex grows the cavity beyond pixel-sampling jitter
        ed = areas[:, ph.ed_frame]
        assert np.all(np.diff(ed[ed > 0]) < 0.03 * ed.max())
        assert ed[0] > 2 * ed[ed > 0][-1]


def test_cavity_areas_are_realistic_in_pixels(default):
    # at 1.5625 mm, comparable to ACDC's LV slices (the paper's bounds: 98-1723 px at 256^2)
    areas = lv_areas(default)
    nonzero = areas[areas > 0]
    assert 60 <= nonzero.min() and nonzero.max() <= 2500
    assert nonzero.max() > 400


def test_ejection_fraction_is_realistic_and_the_cycle_is_smooth(cohort):
    for ph in cohort:
        volume = lv_areas(ph).sum(axis=0).astype(float)  # voxels per frame
        es = ph.es_frame
        ef = 1 - volume[es] / volume[ph.ed_frame]
        assert 0.40 <= ef <= 0.75
        assert volume.argmax() == ph.ed_frame and volume.argmin() == es
        assert np.all(np.diff(volume[: es + 1]) < 0)  # systole: the cavity empties
        assert np.all(np.diff(volume[es:]) > 0)  # diastole: it fills again
        # myocardium thickens at systole: the per-slice wall area stays put while the cavity shrinks
        mid = lv_areas(ph)[:, 0].argmax()
        myo = (ph.labels[:, :, mid] == MYO).sum(axis=(0, 1))
        assert myo[es] == pytest.approx(myo[0], rel=0.15)


def test_cohort_subjects_differ_in_size_and_position(cohort):
    ed_volumes = [lv_areas(p)[:, 0].sum() for p in cohort]
    assert len(set(ed_volumes)) == len(cohort)
    assert max(ed_volumes) > 1.1 * min(ed_volumes)
    centroids = [np.array(ndi.center_of_mass(p.labels[..., 2, 0] == LV)) for p in cohort]
    assert max(np.linalg.norm(c - centroids[0]) for c in centroids) > 2.0
    affines = [p.affine for p in cohort]
    assert not np.allclose(affines[0], affines[1])


def test_myocardium_rings_the_cavity_and_the_rv_is_a_crescent_beside_it(clean):
    labels = clean.labels
    Z = labels.shape[2]
    for t in (clean.ed_frame, clean.es_frame):
        for z in range(Z):
            lv = labels[:, :, z, t] == LV
            if not lv.any():
                continue
            # the cavity is one filled blob wholly surrounded by myocardium
            assert ndi.label(lv)[1] == 1
            ring = ndi.binary_dilation(lv, EIGHT) & ~lv
            assert np.all(labels[:, :, z, t][ring] == MYO)
        rv = (labels[:, :, :, t] == RV).sum(axis=(0, 1))
        assert rv[0] > 0 and rv[0] > rv[Z // 2] and rv[-1] == 0  # smaller toward the apex, gone at it
        base_rv = labels[:, :, 0, t] == RV
        assert not (ndi.binary_dilation(base_rv, EIGHT) & (labels[:, :, 0, t] == LV)).any()
        assert (ndi.binary_dilation(base_rv, EIGHT) & (labels[:, :, 0, t] == MYO)).any()
        # a crescent: much less area than its convex hull's
        from skimage.morphology import convex_hull_image

        assert base_rv.sum() < 0.8 * convex_hull_image(base_rv).sum()


def test_papillary_muscles_are_dark_blobs_labelled_as_cavity(clean):
    found = 0
    for z in range(clean.labels.shape[2]):
        lab, img = clean.labels[:, :, z, 0], clean.image[:, :, z, 0]
        cavity = lab == LV
        if not cavity.any():
            continue
        # ACDC convention: the cavity label has no holes where the muscles are
        np.testing.assert_array_equal(ndi.binary_fill_holes(cavity), cavity)
        blood, myocardium = np.median(img[cavity]), np.median(img[lab == MYO])
        dark, n = ndi.label(cavity & (img < (blood + myocardium) / 2))
        for i in range(1, n + 1):
            blob = dark == i
            if (ndi.binary_dilation(blob, EIGHT) & ~cavity).any():
                continue  # partial-volume rim at the wall, not a muscle
            found += 1
            assert img[blob].mean() < 0.6 * blood
            assert 1 <= blob.sum() <= 60  # small: a few mm across
    assert found >= 3  # present over several mid-ventricular slices


def test_blood_is_bright_and_myocardium_dark_grey(default):
    img, lab = default.image, default.labels
    lv, rv, myo = img[lab == LV].mean(), img[lab == RV].mean(), img[lab == MYO].mean()
    assert lv > 2 * myo and rv > 2 * myo
    assert myo > 0.1 * lv  # grey, not black like the lungs


def test_edges_have_partial_volume(clean):
    # noise-free: pixels on the cavity/myocardium border take intermediate values
    img, lab = clean.image[..., 3, 0], clean.labels[..., 3, 0]
    cavity = lab == LV
    blood, myocardium = np.median(img[cavity]), np.median(img[lab == MYO])
    border = ndi.binary_dilation(cavity, EIGHT) & ~ndi.binary_erosion(cavity, EIGHT) & (lab != RV)
    contrast = (img[border] - myocardium) / (blood - myocardium)
    intermediate = (contrast > 0.1) & (contrast < 0.9)
    assert intermediate.mean() > 0.3
    # while the cavity's core is flat blood
    core = ndi.binary_erosion(cavity, EIGHT, iterations=3)
    assert np.median(np.abs(img[core] - blood)) < 0.01 * blood


# --------------------------------------------------------------- noise, bias
def test_noise_is_rician_in_the_air(default, clean):
    np.testing.assert_array_equal(default.labels, clean.labels)  # noise leaves anatomy alone
    air = clean.image == 0
    assert air.mean() > 0.1
    values = default.image[air].astype(np.float64)
    assert values.min() >= 0 and values.mean() > 0
    assert (default.image >= 0).all()
    # magnitude of a zero-mean complex Gaussian (Rayleigh): mean / std = sqrt(pi/2) / sqrt(2 - pi/2)
    ratio = values.mean() / values.std()
    assert ratio == pytest.approx(np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2), rel=0.03)
    # and the noise is unbiased on bright tissue only to first order: blood stays close to clean
    lv = clean.labels == LV
    assert default.image[lv].mean() == pytest.approx(make_cine_phantom(seed=0, noise=0).image[lv].mean(), rel=0.02)


def test_bias_field_is_smooth_and_non_trivial(clean):
    biased = make_cine_phantom(seed=0, noise=0, bias=0.3)
    body = clean.image > 0.02 * clean.image.max()
    log_ratio = np.zeros(clean.image.shape)
    log_ratio[body] = np.log(biased.image[body] / clean.image[body])
    assert np.abs(log_ratio).max() <= 0.3 + 1e-4
    assert np.exp(log_ratio[body].max() - log_ratio[body].min()) > 1.15  # >15% shading across the body
    for axis in (0, 1):
        n = body.shape[axis]
        both = np.take(body, range(1, n), axis) & np.take(body, range(n - 1), axis)
        step = np.abs(np.diff(log_ratio, axis=axis))[both]
        assert step.max() < 0.01  # under 1% per pixel: slowly varying
    # a multiplicative field: the same at every frame
    both = body[..., 0] & body[..., clean.es_frame]
    np.testing.assert_allclose(log_ratio[..., 0][both], log_ratio[..., clean.es_frame][both], atol=1e-5)


# ----------------------------------------------------------------- geometry
def test_affine_is_oblique_with_the_spacing_as_column_norms(default):
    A = default.affine
    assert not np.allclose(A, np.eye(4))
    np.testing.assert_allclose(np.linalg.norm(A[:3, :3], axis=0), default.spacing, rtol=1e-12)
    assert abs(np.linalg.det(A[:3, :3])) == pytest.approx(np.prod(default.spacing))
    np.testing.assert_array_equal(A[3], [0, 0, 0, 1])
    rotation = A[:3, :3] / np.asarray(default.spacing)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
    off_diagonal = np.abs(rotation[~np.eye(3, dtype=bool)])
    assert (off_diagonal > 0.2).sum() >= 3  # double oblique, not a swap of axes
    assert np.linalg.norm(A[:3, 3]) > 10  # a non-zero origin


def test_to_nifti_round_trips_with_geometry_and_units(default, tmp_path):
    image, labels = default.to_nifti()
    for img, dtype in ((image, np.float32), (labels, np.uint8)):
        path = tmp_path / f"{dtype.__name__}.nii.gz"
        nib.save(img, path)
        back = nib.load(path)
        assert back.get_data_dtype() == dtype
        assert back.header.get_xyzt_units() == ("mm", "msec")
        assert back.header["qform_code"] == 1 and back.header["sform_code"] == 1
        np.testing.assert_allclose(back.affine, default.affine, atol=1e-4)
        np.testing.assert_allclose(back.get_qform(), default.affine, atol=1e-4)
        np.testing.assert_allclose(
            back.header.get_zooms(), (*default.spacing, default.frame_time_ms), rtol=1e-6
        )
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "float32.nii.gz").dataobj), default.image)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "uint8.nii.gz").dataobj), default.labels)


# ------------------------------------------------------------- determinism
def test_same_seed_same_arrays_different_seed_different():
    a = make_cine_phantom((64, 56, 4, 3), seed=3)
    b = make_cine_phantom((64, 56, 4, 3), seed=3)
    c = make_cine_phantom((64, 56, 4, 3), seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert (a.es_frame, a.frame_time_ms) == (b.es_frame, b.frame_time_ms)
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.image, c.image)


def test_cohort_subject_i_is_the_phantom_of_seed_plus_i(cohort):
    assert len(cohort) == 4
    third = make_cine_phantom(SMALL, seed=12)
    np.testing.assert_array_equal(cohort[2].image, third.image)
    np.testing.assert_array_equal(cohort[2].labels, third.labels)
    assert make_cohort(0) == []
