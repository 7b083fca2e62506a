"""NIfTI I/O: geometry-preserving round trips, strict loading, safe atomic writes.

Test images are built with nibabel directly (independently of the module under
test) with oblique affines, anisotropic zooms and a qform (code 1) that differs
from the sform (code 2), so that a writer that rebuilds either matrix, drops a
code or swaps them fails.
"""

from __future__ import annotations

import gzip
import io
import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header

from napari_sizeloss.nifti import (
    NiftiError,
    NiftiVolume,
    atomic_save,
    load_nifti,
    save_image,
    save_mask,
)

ZOOMS = (0.9, 1.3, 7.5)  # anisotropic, mm
FRAME_S = 0.04  # 40 ms between frames, stored in seconds


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """A proper rotation (det +1) from three angles in radians."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(zooms, angles, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(*angles) @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


QFORM = oblique_affine(ZOOMS, (0.3, -0.2, 0.5), (-80.0, 40.5, 12.25))
SFORM = oblique_affine(ZOOMS, (-0.4, 0.25, 1.1), (10.0, -95.0, 33.0))

SHAPES = {2: (7, 6), 3: (7, 6, 4), 4: (7, 6, 4, 3)}
CLASSES = {"nifti1": nib.Nifti1Image, "nifti2": nib.Nifti2Image}


def make_image(shape, klass=nib.Nifti1Image, dtype=np.float32, time_unit="sec", seed=0):
    """A nibabel image with distinct qform (code 1) and sform (code 2)."""
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 100).astype(dtype)
    img = klass(data, None)
    img.header.set_data_dtype(dtype)
    img.set_qform(QFORM, code=1)
    img.set_sform(SFORM, code=2)
    img.header.set_xyzt_units("mm", time_unit)
    img.header.set_zooms((*ZOOMS, FRAME_S, 1.0, 1.0, 1.0)[: len(shape)])
    return img


def write(img, path):
    nib.save(img, str(path))
    return path


def rewrite_header(path, **fields):
    """Overwrite raw header fields in a file, bypassing nibabel's fix-ups.

    A value that is a dict sets array elements: ``pixdim={2: -1.0}``.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fobj:
        raw = bytearray(fobj.read())
    header_class = Nifti2Header if int.from_bytes(raw[:4], "little") == 540 else Nifti1Header
    hdr = header_class.from_fileobj(io.BytesIO(bytes(raw)), check=False)
    arr = hdr.structarr
    for key, value in fields.items():
        if isinstance(value, dict):
            for index, item in value.items():
                arr[key][index] = item
        else:
            arr[key] = value
    block = hdr.binaryblock
    raw[: len(block)] = block
    with opener(path, "wb") as fobj:
        fobj.write(bytes(raw))


def files_in(directory):
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("ndim", [2, 3, 4])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", ["nifti1", "nifti2"])
def test_load_then_save_mask_keeps_geometry_exactly(tmp_path, ndim, suffix, kind):
    img = make_image(SHAPES[ndim], CLASSES[kind])
    src = write(img, tmp_path / f"image{suffix}")

    vol = load_nifti(src)
    np.testing.assert_array_equal(vol.data, np.asarray(img.dataobj))
    assert vol.data.dtype == np.float32 and vol.data.shape == SHAPES[ndim]
    assert vol.affine.dtype == np.float64 and vol.affine.shape == (4, 4)
    np.testing.assert_allclose(vol.affine, SFORM, atol=1e-5)  # sform wins (code 2 > 0)
    assert (vol.qform_code, vol.sform_code) == (1, 2)
    assert isinstance(vol.header, Nifti2Header) == (kind == "nifti2")
    assert vol.header is not img.header
    assert vol.path == src.resolve()
    assert vol.ndim == ndim and vol.spatial_shape == SHAPES[ndim][:3]
    assert vol.spacing == pytest.approx(ZOOMS[: min(3, ndim)], rel=1e-6)

    mask = vol.data > 50
    out = save_mask(tmp_path / f"mask{suffix}", mask, vol)
    back = nib.load(str(out))
    on_disk = nib.load(str(src))
    assert type(back) is type(on_disk)
    assert back.get_data_dtype() == np.uint8
    assert back.shape == SHAPES[ndim]
    np.testing.assert_array_equal(np.asarray(back.dataobj), mask.astype(np.uint8))
    for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                  "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        np.testing.assert_array_equal(back.header[field], on_disk.header[field], err_msg=field)
    np.testing.assert_array_equal(back.header.get_qform(), on_disk.header.get_qform())
    np.testing.assert_array_equal(back.header.get_sform(), on_disk.header.get_sform())
    np.testing.assert_allclose(back.header.get_qform(), QFORM, atol=1e-4)
    assert back.header.get_zooms() == on_disk.header.get_zooms()
    assert np.isnan(back.header["scl_slope"]) or back.header["scl_slope"] == 1
    assert suffix == ".nii" or open(out, "rb").read(2) == b"\x1f\x8b"

    again = load_nifti(out, dtype=None)
    assert again.data.dtype == np.uint8
    np.testing.assert_array_equal(again.affine, vol.affine)


def test_3d_mask_of_4d_image_is_written_3d_with_spatial_geometry(tmp_path):
    src = write(make_image(SHAPES[4]), tmp_path / "cine.nii.gz")
    vol = load_nifti(src)
    mask = (vol.data[..., 1] > 30).astype(np.int64)
    out = save_mask(tmp_path / "frame1.nii.gz", mask, vol)
    back = nib.load(str(out))
    assert back.shape == SHAPES[4][:3]
    np.testing.assert_array_equal(np.asarray(back.dataobj), mask)
    np.testing.assert_allclose(back.header.get_zooms(), ZOOMS, rtol=1e-6)
    np.testing.assert_array_equal(back.header.get_qform(), vol.header.get_qform())
    np.testing.assert_array_equal(back.affine, vol.affine)


def test_qform_is_the_affine_when_sform_code_is_zero(tmp_path):
    img = make_image(SHAPES[3])
    img.set_sform(SFORM, code=0)
    vol = load_nifti(write(img, tmp_path / "q.nii"))
    np.testing.assert_allclose(vol.affine, QFORM, atol=1e-5)
    out = save_mask(tmp_path / "m.nii", np.zeros(SHAPES[3], bool), vol)
    back = nib.load(str(out))
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 0)
    np.testing.assert_allclose(back.affine, QFORM, atol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "uint8"])
def test_mask_values_survive_without_a_copy_and_the_callers_array_is_untouched(tmp_path, kind):
    """Labels already in the written type go to nibabel as they are, also as a non-contiguous view (a layer's)."""
    vol = load_nifti(write(make_image(SHAPES[3]), tmp_path / "src.nii"))
    rng = np.random.default_rng(3)
    layer = rng.random(SHAPES[3][::-1]) > 0.5  # napari order, C-contiguous
    layer = layer if kind == "bool" else layer.astype(np.uint8) * 7
    before = layer.copy()
    mask = layer.T  # (X, Y, Z): a transposed view, as the writer hands it over
    out = save_mask(tmp_path / "m.nii.gz", mask, vol)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), mask.astype(np.uint8))
    np.testing.assert_array_equal(layer, before)


def test_mask_of_a_scaled_integer_image_is_not_rescaled(tmp_path):
    img = make_image(SHAPES[3], dtype=np.int16)
    img.header.set_slope_inter(2.5, -3.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 300
    src = write(img, tmp_path / "scaled.nii")
    raw = np.asarray(nib.load(str(src)).dataobj.get_unscaled())

    vol = load_nifti(src)
    np.testing.assert_allclose(vol.data, raw * 2.5 - 3.0, rtol=1e-6)
    raw_scaled = load_nifti(src, dtype=None)
    assert raw_scaled.data.dtype.kind == "f"  # nibabel applies the slope

    labels = (raw % 3).astype(np.uint8)
    out = save_mask(tmp_path / "labels.nii", labels, vol)
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)  # no 2.5x, no -3
    assert back.header["cal_min"] == 0 and back.header["cal_max"] == 0


def test_dtype_none_keeps_the_on_disk_integer_type(tmp_path):
    img = make_image(SHAPES[3], dtype=np.int16)
    vol = load_nifti(write(img, tmp_path / "int.nii.gz"), dtype=None)
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, np.asarray(img.dataobj))
    wide = load_nifti(tmp_path / "int.nii.gz", dtype=np.float64)
    assert wide.data.dtype == np.float64
    np.testing.assert_array_equal(wide.data, vol.data)
    with pytest.raises(TypeError, match="floating"):
        load_nifti(tmp_path / "int.nii.gz", dtype=np.uint8)


def test_mask_dtype_grows_to_uint16_for_labels_above_255(tmp_path):
    vol = load_nifti(write(make_image(SHAPES[3]), tmp_path / "a.nii"))
    labels = np.zeros(SHAPES[3], np.int32)
    labels[0, 0, 0], labels[1, 2, 3] = 255, 256
    back = nib.load(str(save_mask(tmp_path / "big.nii", labels, vol)))
    assert back.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
    labels[1, 2, 3] = 255
    small = nib.load(str(save_mask(tmp_path / "small.nii", labels.astype(float), vol)))
    assert small.get_data_dtype() == np.uint8


# ------------------------------------------------------------- units & shapes
@pytest.mark.parametrize(
    ("unit", "zoom", "expected_ms"),
    [("sec", 0.04, 40.0), ("msec", 33.5, 33.5), ("usec", 25000.0, 25.0), ("unknown", 30.0, 30.0)],
)
def test_frame_time_is_converted_to_ms(tmp_path, unit, zoom, expected_ms):
    img = make_image(SHAPES[4], time_unit=unit)
    img.header.set_zooms((*ZOOMS, zoom))
    vol = load_nifti(write(img, tmp_path / "cine.nii"))
    assert vol.frame_time == pytest.approx(expected_ms, rel=1e-6)


def test_frame_time_is_none_for_3d_and_for_an_unrecorded_zero(tmp_path):
    assert load_nifti(write(make_image(SHAPES[3]), tmp_path / "a.nii")).frame_time is None
    img = make_image(SHAPES[4])
    img.header.set_zooms((*ZOOMS, 0.0))
    assert load_nifti(write(img, tmp_path / "b.nii")).frame_time is None


def test_spacing_in_metres_is_converted_to_mm(tmp_path):
    img = make_image(SHAPES[3])
    img.header.set_xyzt_units("meter", "sec")
    img.header.set_zooms(tuple(z / 1000 for z in ZOOMS))
    vol = load_nifti(write(img, tmp_path / "m.nii"))
    assert vol.spacing == pytest.approx(ZOOMS, rel=1e-6)


def test_trailing_singleton_fifth_dimension_is_dropped(tmp_path):
    img = make_image((*SHAPES[4], 1))
    vol = load_nifti(write(img, tmp_path / "five.nii"))
    assert vol.data.shape == SHAPES[4]
    assert vol.header.get_data_shape() == SHAPES[4]
    assert vol.frame_time == pytest.approx(40.0)
    np.testing.assert_array_equal(vol.data, np.asarray(img.dataobj)[..., 0])


def test_a_4d_volume_with_one_frame_keeps_its_singleton(tmp_path):
    vol = load_nifti(write(make_image((7, 6, 4, 1)), tmp_path / "one.nii"))
    assert vol.data.shape == (7, 6, 4, 1)


# ------------------------------------------------------------ loading rejects
def assert_rejected(path, *match, **kwargs):
    with pytest.raises(NiftiError) as info:
        load_nifti(path, **kwargs)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message
    for text in match:
        assert text in message
    return message


def test_rejects_missing_file_and_directory(tmp_path):
    assert_rejected(tmp_path / "absent.nii.gz", "no such file")
    folder = tmp_path / "folder.nii"
    folder.mkdir()
    assert_rejected(folder, "directory")


def test_rejects_files_that_are_not_nifti(tmp_path):
    png_bytes = b"\x89PNG\r\n\x1a\n" + bytes(400)
    (tmp_path / "slice.png").write_bytes(png_bytes)
    assert_rejected(tmp_path / "slice.png", "not a NIfTI")
    (tmp_path / "disguised.nii").write_bytes(png_bytes)
    assert_rejected(tmp_path / "disguised.nii", "not a NIfTI")
    (tmp_path / "notes.nii").write_text("not a nifti\n")
    assert_rejected(tmp_path / "notes.nii", "not a NIfTI")
    (tmp_path / "plain.nii.gz").write_bytes(bytes(600))  # not gzip at all
    assert_rejected(tmp_path / "plain.nii.gz")


def test_rejects_truncated_files(tmp_path):
    big = make_image((16, 16, 8, 4))
    for name in ("cut.nii.gz", "cut.nii"):
        full = write(big, tmp_path / f"full_{name}").read_bytes()
        cut = tmp_path / name
        cut.write_bytes(full[: len(full) // 2])
        assert_rejected(cut)


def test_rejects_an_analyze_header_without_nifti_magic(tmp_path):
    path = write(make_image(SHAPES[3]), tmp_path / "analyze.nii")
    rewrite_header(path, magic=b"\x00\x00\x00\x00")
    assert_rejected(path, "not a NIfTI")


def test_rejects_5d_data_and_1d_data(tmp_path):
    assert_rejected(write(make_image((*SHAPES[4], 2)), tmp_path / "five.nii"), "5D", "(7, 6, 4, 3, 2)")
    assert_rejected(write(make_image((9,)), tmp_path / "line.nii"), "1D")


def test_rejects_nan_voxels_by_default_and_counts_them(tmp_path):
    img = make_image(SHAPES[3])
    data = np.asarray(img.dataobj).copy()
    data.flat[[1, 5, 17]] = np.nan
    path = write(nib.Nifti1Image(data, SFORM, img.header), tmp_path / "image.nii.gz")
    message = assert_rejected(path, "contains 3 NaN voxels")
    assert message == f"{path} contains 3 NaN voxels"
    vol = load_nifti(path, allow_nan=True)
    assert np.isnan(vol.data).sum() == 3


def test_rejects_infinite_voxels(tmp_path):
    img = make_image(SHAPES[2])
    data = np.asarray(img.dataobj).copy()
    data[0, 0], data[1, 1] = np.inf, -np.inf
    path = write(nib.Nifti1Image(data, SFORM, img.header), tmp_path / "inf.nii")
    assert_rejected(path, "2 infinite voxels")


@pytest.mark.parametrize("bad", [0.0, -1.3, np.nan, np.inf])
@pytest.mark.parametrize("axis", [1, 3])
def test_rejects_bad_spatial_zooms(tmp_path, bad, axis):
    # nibabel would silently replace 0 by 1 and -1.3 by 1.3 on load.
    path = write(make_image(SHAPES[3]), tmp_path / "zooms.nii.gz")
    rewrite_header(path, pixdim={axis: bad})
    assert_rejected(path, "voxel sizes")


@pytest.mark.parametrize("bad", [-0.04, np.nan])
def test_rejects_bad_frame_time(tmp_path, bad):
    path = write(make_image(SHAPES[4]), tmp_path / "cine.nii")
    rewrite_header(path, pixdim={4: bad})
    assert_rejected(path, "frame time")


def test_rejects_a_singular_affine(tmp_path):
    path = write(make_image(SHAPES[3]), tmp_path / "flat.nii")
    srow_z = SFORM[0] + 2 * SFORM[1]  # third row a combination of the first two
    srow_z[3] = 5.0
    rewrite_header(path, srow_z=srow_z)
    assert_rejected(path, "singular affine")
    rewrite_header(path, srow_z=[np.nan, 0, 1, 0])
    assert_rejected(path, "affine")


def test_loading_uppercase_suffix_works(tmp_path):
    vol = load_nifti(write(make_image(SHAPES[3]), tmp_path / "UPPER.NII.GZ"))
    assert vol.data.shape == SHAPES[3]


# --------------------------------------------------------- save_mask is safe
@pytest.fixture
def source(tmp_path):
    path = write(make_image(SHAPES[4], nib.Nifti2Image), tmp_path / "image.nii.gz")
    return path, load_nifti(path)


def test_save_mask_refuses_to_overwrite_the_source(tmp_path, source):
    path, vol = source
    before = path.read_bytes()
    mask = np.zeros(vol.data.shape, np.uint8)
    sub = tmp_path / "sub"
    sub.mkdir()
    link = tmp_path / "hardlink.nii.gz"
    os.link(path, link)
    for target in (path, sub / ".." / path.name, str(path), link):
        with pytest.raises(NiftiError, match="refusing to overwrite the source image"):
            save_mask(target, mask, vol)
    assert path.read_bytes() == before
    assert link.read_bytes() == before


@pytest.mark.parametrize(
    "bad_shape", [(7, 6, 4, 2), (7, 6), (6, 7, 4, 3), (7, 6, 4, 3, 1)]
)
def test_shape_mismatch_names_both_shapes_and_writes_nothing(tmp_path, source, bad_shape):
    _, vol = source
    listing = files_in(tmp_path)
    with pytest.raises(NiftiError) as info:
        save_mask(tmp_path / "mask.nii.gz", np.zeros(bad_shape, np.uint8), vol)
    assert str(bad_shape) in str(info.value) and str(vol.data.shape) in str(info.value)
    assert files_in(tmp_path) == listing


def test_failed_write_leaves_an_existing_file_untouched(tmp_path, source):
    _, vol = source
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"previous result")
    with pytest.raises(NiftiError):
        save_mask(out, np.full(vol.data.shape, -1), vol)
    with pytest.raises(NiftiError):
        save_mask(out, np.zeros((3, 3)), vol)
    assert out.read_bytes() == b"previous result"


def test_error_during_the_write_removes_the_temporary_and_keeps_the_old_file(
    tmp_path, source, monkeypatch
):
    _, vol = source
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"previous result")
    listing = files_in(tmp_path)
    real_save = nib.save

    def save_then_fail(img, filename, **kwargs):
        real_save(img, filename, **kwargs)  # a complete temporary exists ...
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(nib, "save", save_then_fail)
    with pytest.raises(NiftiError, match="No space left on device"):
        save_mask(out, np.ones(vol.data.shape, np.uint8), vol)
    assert out.read_bytes() == b"previous result"
    assert files_in(tmp_path) == listing


def test_missing_directory_and_file_as_directory_are_one_line_errors(tmp_path, source):
    _, vol = source
    mask = np.zeros(vol.data.shape, np.uint8)
    with pytest.raises(NiftiError, match="directory does not exist") as info:
        save_mask(tmp_path / "nope" / "x.nii.gz", mask, vol)
    assert str(tmp_path / "nope" / "x.nii.gz") in str(info.value)
    regular = tmp_path / "regular_file"
    regular.write_text("I am a file")
    with pytest.raises(NiftiError, match="not a directory"):
        save_mask(regular / "x.nii.gz", mask, vol)
    with pytest.raises(NiftiError, match="not a directory"):
        save_mask(regular / "deeper" / "x.nii.gz", mask, vol)
    assert regular.read_text() == "I am a file"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_permission_denied(tmp_path, source):
    _, vol = source
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(NiftiError, match="permission denied"):
            save_mask(locked / "x.nii.gz", np.zeros(vol.data.shape, np.uint8), vol)
        assert files_in(locked) == []
    finally:
        locked.chmod(0o700)


def test_permission_error_on_create_is_a_one_line_error(tmp_path, source, monkeypatch):
    # Runs as root too: the operating system's refusal is simulated.
    _, vol = source
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"previous result")
    listing = files_in(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(NiftiError) as info:
        save_mask(out, np.zeros(vol.data.shape, np.uint8), vol)
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {out}: permission denied"
    assert out.read_bytes() == b"previous result"
    assert files_in(tmp_path) == listing


def test_bad_suffix_overwrite_false_and_directory_target(tmp_path, source):
    _, vol = source
    mask = np.zeros(vol.data.shape, np.uint8)
    for name in ("mask.png", "mask.nii.bz2", "mask.img", ".nii"):
        with pytest.raises(NiftiError, match=r"\.nii or \.nii\.gz"):
            save_mask(tmp_path / name, mask, vol)
    existing = tmp_path / "existing.nii"
    existing.write_bytes(b"keep")
    with pytest.raises(NiftiError, match="exists"):
        save_mask(existing, mask, vol, overwrite=False)
    assert existing.read_bytes() == b"keep"
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(NiftiError, match="directory"):
        save_mask(tmp_path / "dir.nii", mask, vol)


@pytest.mark.parametrize(
    ("value", "match"),
    [(-1, "negative"), (np.nan, "NaN"), (0.5, "non-integer"), (70000, "65535")],
)
def test_rejects_invalid_mask_values(tmp_path, source, value, match):
    _, vol = source
    mask = np.zeros(vol.data.shape, float)
    mask[1, 2, 3, 0] = value
    with pytest.raises(NiftiError, match=match):
        save_mask(tmp_path / "m.nii.gz", mask, vol)
    assert not (tmp_path / "m.nii.gz").exists()


def test_written_files_get_the_usual_permissions(tmp_path, source):
    _, vol = source
    out = save_mask(tmp_path / "m.nii", np.zeros(vol.data.shape, bool), vol)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # created by open(): mode 0o666 minus the umask
    assert (out.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_reference_affine_that_disagrees_with_its_header_wins(tmp_path):
    header = Nifti1Header()  # codes 0: its own affine is only the zooms
    shape = SHAPES[3]
    vol = NiftiVolume(np.zeros(shape, np.float32), SFORM.copy(), header, None)
    out = save_mask(tmp_path / "m.nii", np.ones(shape, np.uint8), vol)
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, SFORM, atol=1e-5)
    assert int(back.header["sform_code"]) == 1 and int(back.header["qform_code"]) == 1


# ------------------------------------------------------------------ save_image
def test_save_image_without_header_writes_scanner_codes_mm_and_ms(tmp_path, rng):
    data = rng.normal(size=SHAPES[4]).astype(np.float64)
    out = save_image(tmp_path / "phantom.nii.gz", data, SFORM, frame_time_ms=40.0)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.float32
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(back.header.get_qform(), SFORM, atol=1e-4)
    np.testing.assert_allclose(back.header.get_sform(), SFORM, atol=1e-4)
    assert back.header.get_xyzt_units() == ("mm", "msec")
    np.testing.assert_allclose(back.header.get_zooms(), (*ZOOMS, 40.0), rtol=1e-6)
    vol = load_nifti(out)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    assert vol.frame_time == pytest.approx(40.0)


def test_save_image_with_a_header_keeps_its_distinct_qform_and_sform(tmp_path):
    vol = load_nifti(write(make_image(SHAPES[4], nib.Nifti2Image), tmp_path / "src.nii"))
    out = save_image(tmp_path / "copy.nii", vol.data * 2, vol.affine, header=vol.header)
    back = nib.load(str(out))
    assert isinstance(back, nib.Nifti2Image)
    np.testing.assert_array_equal(back.header.get_qform(), vol.header.get_qform())
    np.testing.assert_array_equal(back.header.get_sform(), vol.header.get_sform())
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 2)
    assert load_nifti(out).frame_time == pytest.approx(40.0)  # seconds in, ms out


def test_save_image_of_one_slice_with_the_volume_header_keeps_the_qform(tmp_path):
    # nibabel resets the unused 3rd zoom to 1 when a 3D header gets 2D data,
    # which would change the qform's slice column.
    vol = load_nifti(write(make_image(SHAPES[3]), tmp_path / "vol.nii"))
    out = save_image(tmp_path / "slice0.nii", vol.data[:, :, 0], vol.affine, header=vol.header)
    back = nib.load(str(out))
    assert back.shape == SHAPES[3][:2]
    np.testing.assert_array_equal(back.header.get_qform(), vol.header.get_qform())
    np.testing.assert_array_equal(back.header.get_sform(), vol.header.get_sform())
    np.testing.assert_allclose(back.header.get_qform(), QFORM, atol=1e-4)


def test_save_image_rejects_inconsistent_zooms_bad_data_and_singular_affines(tmp_path):
    data = np.zeros(SHAPES[3], np.float32)
    with pytest.raises(NiftiError, match="zooms"):
        save_image(tmp_path / "a.nii", data, SFORM, zooms=(1.0, 1.0, 1.0))
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NiftiError, match="NaN"):
        save_image(tmp_path / "a.nii", bad, SFORM)
    flat = SFORM.copy()
    flat[:, 2] = 0
    flat[3, 3] = 1
    with pytest.raises(NiftiError, match="singular"):
        save_image(tmp_path / "a.nii", data, flat)
    with pytest.raises(NiftiError, match="frame_time_ms"):
        save_image(tmp_path / "a.nii", data, SFORM, frame_time_ms=30.0)
    assert files_in(tmp_path) == []


def test_atomic_save_compresses_by_suffix_and_replaces(tmp_path):
    img = make_image(SHAPES[3])
    gz = atomic_save(img, tmp_path / "a.nii.gz")
    plain = atomic_save(img, tmp_path / "a.nii")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert plain.read_bytes()[:4] == (348).to_bytes(4, "little")
    atomic_save(make_image(SHAPES[3], seed=1), tmp_path / "a.nii")
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(plain)).dataobj), np.asarray(make_image(SHAPES[3], seed=1).dataobj)
    )
    assert files_in(tmp_path) == ["a.nii", "a.nii.gz"]
