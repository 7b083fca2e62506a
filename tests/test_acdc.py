"""ACDC-layout loading, patient split and the native <-> network slice grid."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sizeloss.acdc import (
    LV_CAVITY,
    ACDCError,
    find_patients,
    load_acdc,
    phantom_cohort,
    prepare_volume,
    read_info_cfg,
    slice_geometry,
    split_patients,
)
from napari_sizeloss.phantom import make_cine_phantom

SHAPE = (48, 40, 4, 6)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, spacing, dtype) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.header.set_zooms(tuple(spacing))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_fake_acdc(root: Path, n: int, seed: int = 0) -> dict[str, object]:
    """An ACDC-layout folder of ``n`` phantom patients; returns {patient id: phantom}."""
    phantoms = {}
    for i in range(n):
        ph = make_cine_phantom(SHAPE, seed=seed + i)
        pid = f"patient{i + 1:03d}"
        pdir = root / pid
        pdir.mkdir(parents=True)
        ed, es = ph.ed_frame + 1, ph.es_frame + 1  # ACDC frames are 1-based
        (pdir / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 170.0\nNbFrame: {SHAPE[3]}\nWeight: 70.0\n")
        for frame in (ed, es):
            stem = pdir / f"{pid}_frame{frame:02d}"
            write_nifti(Path(f"{stem}.nii.gz"), ph.image[..., frame - 1], ph.affine, ph.spacing, np.float32)
            write_nifti(Path(f"{stem}_gt.nii.gz"), ph.labels[..., frame - 1], ph.affine, ph.spacing, np.uint8)
        phantoms[pid] = ph
    return phantoms


def test_load_acdc_reads_ed_and_es_frames_with_spacing(tmp_path):
    phantoms = write_fake_acdc(tmp_path, 3)
    cohort = load_acdc(tmp_path)
    assert list(cohort) == ["patient001", "patient002", "patient003"]
    for pid, volumes in cohort.items():
        ph = phantoms[pid]
        assert [v.phase for v in volumes] == ["ED", "ES"]
        for v, frame in zip(volumes, (ph.ed_frame, ph.es_frame)):
            assert v.frame == frame + 1
            np.testing.assert_allclose(v.image, ph.image[..., frame], rtol=1e-6)
            np.testing.assert_array_equal(v.labels, ph.labels[..., frame])
            np.testing.assert_allclose(v.spacing, ph.spacing, rtol=1e-5)
            assert v.name == f"{pid}_{v.phase}"


def test_training_subfolder_and_subject_selection(tmp_path):
    write_fake_acdc(tmp_path / "training", 2)
    assert [p.name for p in find_patients(tmp_path)] == ["patient001", "patient002"]
    assert list(load_acdc(tmp_path, subjects=["patient002"])) == ["patient002"]


def test_info_cfg_is_parsed(tmp_path):
    cfg = tmp_path / "Info.cfg"
    cfg.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\n")
    assert read_info_cfg(cfg) == {"ED": "1", "ES": "12", "Group": "DCM", "Height": "184.0"}


def test_errors_name_the_file_at_fault(tmp_path):
    write_fake_acdc(tmp_path, 1)
    pdir = tmp_path / "patient001"
    gt = sorted(pdir.glob("*_gt.nii.gz"))[-1]
    gt.unlink()
    with pytest.raises(ACDCError, match=gt.name.replace(".nii.gz", "")):
        load_acdc(tmp_path)
    (pdir / "Info.cfg").write_text("ED: 1\nGroup: NOR\n")
    with pytest.raises(ACDCError, match="Info.cfg.*ES"):
        load_acdc(tmp_path)
    with pytest.raises(ACDCError, match="no patientNNN"):
        load_acdc(pdir)
    assert issubclass(ACDCError, ValueError)


def test_split_is_by_patient_seeded_and_explicit():
    subjects = [f"patient{i:03d}" for i in range(1, 21)]
    train, val = split_patients(subjects, 5, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(subjects)
    assert split_patients(subjects, 5, seed=3) == (train, val)
    assert any(split_patients(subjects, 5, seed=s)[1] != val for s in range(4, 8))
    for bad in (0, 20, -1):
        with pytest.raises(ValueError, match="val-patients"):
            split_patients(subjects, bad)


def disc(shape, spacing, radius_mm, centre=None) -> np.ndarray:
    X, Y = shape
    cx, cy = ((X - 1) / 2, (Y - 1) / 2) if centre is None else centre
    x = (np.arange(X)[:, None] - cx) * spacing[0]
    y = (np.arange(Y)[None, :] - cy) * spacing[1]
    return x * x + y * y <= radius_mm**2


@pytest.mark.parametrize("mode", ["resize", "spacing"])
def test_network_grid_keeps_areas_in_mm2(mode):
    native, spacing = (150, 120), (1.4, 1.9)
    mask = disc(native, spacing, 30.0)
    geo = slice_geometry(native, spacing, size=64, mode=mode, target_spacing=3.5)
    net = geo.to_network(mask.astype(np.float32), labels=True)
    assert net.shape == (64, 64) and net.dtype == bool
    true_area = np.pi * 30.0**2
    assert net.sum() * geo.pixel_area_mm2 == pytest.approx(true_area, rel=0.06)
    back = geo.to_native(net.astype(np.float32)) > 0.5
    dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
    assert dice > 0.95


def test_resize_mode_matches_the_paper_stretch():
    geo = slice_geometry((150, 120), (1.4, 1.9), size=256, mode="resize")
    assert geo.resized == (256, 256) and geo.offset == (0, 0)
    assert geo.pixel_spacing == pytest.approx((1.4 * 150 / 256, 1.9 * 120 / 256))


def test_spacing_mode_keeps_shape_and_centres_the_slice():
    native, spacing = (150, 120), (1.4, 1.9)
    geo = slice_geometry(native, spacing, size=64, mode="spacing", target_spacing=3.0)
    assert geo.resized == (70, 76)  # 210 mm / 3 and 228 mm / 3: cropped to 64
    net = geo.to_network(disc(native, spacing, 30.0).astype(np.float32), labels=True)
    xs, ys = np.nonzero(net)
    # A round disc stays round (the resize mode would squash it) and central.
    assert (xs.max() - xs.min()) == pytest.approx(ys.max() - ys.min(), abs=1)
    assert (xs.max() + xs.min()) / 2 == pytest.approx(31.5, abs=1)
    assert (ys.max() + ys.min()) / 2 == pytest.approx(31.5, abs=1)
    # Zero-padded when the slice is smaller than the window.
    small = slice_geometry((20, 20), (1.0, 1.0), size=32, mode="spacing", target_spacing=1.0)
    out = small.to_network(np.ones((20, 20), dtype=np.float32))
    assert out.sum() == 400 and out[0, 0] == 0 and out[6, 6] == 1
    back = small.to_native(out)
    np.testing.assert_allclose(back, 1.0)


def test_geometry_rejects_bad_options():
    with pytest.raises(ValueError, match="target spacing"):
        slice_geometry((10, 10), (1, 1), 32, mode="spacing")
    with pytest.raises(ValueError, match="mode"):
        slice_geometry((10, 10), (1, 1), 32, mode="warp")  # type: ignore[arg-type]


def test_prepared_volume_tags_and_native_mask(tmp_path):
    cohort = phantom_cohort(1, seed=4, shape=SHAPE)
    (ed, es) = cohort["phantom000"]
    assert (ed.phase, es.phase) == ("ED", "ES")
    prepared = prepare_volume(es, label=LV_CAVITY, size=32)
    Z = SHAPE[2]
    assert prepared.images.shape == (Z, 32, 32) and prepared.images.dtype == np.float32
    assert prepared.target.shape == (Z, 32, 32)
    np.testing.assert_array_equal(prepared.present, (es.labels == LV_CAVITY).any(axis=(0, 1)))
    assert -0.5 <= prepared.images.min() and prepared.images.max() <= 1.5
    # The ground truth brought to the network and back scores high against itself.
    mask = prepared.native_mask(prepared.target.astype(np.float32))
    truth = es.labels == LV_CAVITY
    assert mask.shape == truth.shape
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.85
