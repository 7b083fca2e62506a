"""Autosave storage: where files go, round trip, fingerprint matching, read-only fallback."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_sizeloss._qt import autosave
from napari_sizeloss._qt.supervision import pack_corrections, unpack_corrections


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "userdata"
    monkeypatch.setenv(autosave.DATA_DIR_ENV, str(folder))
    return folder


def _work(fp: str) -> autosave.SavedWork:
    corrected = np.zeros((4, 3), bool)
    corrected[1, 2] = corrected[3, 0] = True
    corrections = np.zeros((6, 5, 4, 3), np.uint8)
    corrections[1:3, 1:4, 1, 2] = 1
    corrections[0, 0, 3, 0] = 1
    absent = np.zeros((4, 3), bool)
    absent[0] = True
    return autosave.SavedWork(
        fingerprint=fp,
        points=np.array([[0.0, 1.0, 2.5, 3.0], [2.0, 3.0, 1.0, 1.0]]),
        kinds=["target", "background"],
        absent=absent,
        corrected=corrected,
        corrections=pack_corrections(corrections, corrected),
        bounds=(120.5, 900.0, "mm2"),
    )


def test_round_trip_keeps_everything(tmp_path):
    work = _work("abc")
    path = autosave.save_work(tmp_path / "x.sizeloss.npz", work)
    back = autosave.load_work(path)
    assert back is not None
    np.testing.assert_array_equal(back.points, work.points)
    assert back.kinds == ["target", "background"]
    np.testing.assert_array_equal(back.absent, work.absent)
    np.testing.assert_array_equal(back.corrected, work.corrected)
    assert back.fits((6, 5, 4, 3), layer_ndim=4)
    volume = back.corrections_volume()
    assert volume.shape == (6, 5, 4, 3) and volume.flags.f_contiguous
    assert volume[:, :, 1, 2].sum() == 6 and volume[0, 0, 3, 0] == 1 and volume.sum() == 7
    assert back.bounds == (120.5, 900.0, "mm2")
    assert "1 target dot(s)" in back.summary() and "2 corrected slice(s)" in back.summary()
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write left nothing behind


def test_work_that_does_not_fit_the_image_is_recognised():
    """A saved file for another grid, or a tampered one, is refused rather than restored (or crashing)."""
    work = _work("abc")
    assert work.fits((6, 5, 4, 3), layer_ndim=4)
    assert not work.fits((6, 5, 4, 2), layer_ndim=4)  # other frames
    assert not work.fits((5, 6, 4, 3), layer_ndim=4)  # other in-plane grid: the corrections would not fit
    assert not work.fits((6, 5, 4, 3), layer_ndim=3)  # 4D dots on a 3D layer
    work.corrections = work.corrections[:, :, :1]  # one mask for two corrected slices
    assert not work.fits((6, 5, 4, 3), layer_ndim=4)


def test_packing_keeps_exactly_the_corrected_slices():
    rng = np.random.default_rng(0)
    volume = (rng.random((6, 5, 4, 3)) > 0.5).astype(np.uint8)
    corrected = np.zeros((4, 3), bool)
    corrected[3, 0] = corrected[1, 2] = True
    packed = pack_corrections(volume, corrected)
    assert packed.shape == (6, 5, 2) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed[:, :, 0], volume[:, :, 1, 2])  # argwhere order: (1, 2) before (3, 0)
    np.testing.assert_array_equal(packed[:, :, 1], volume[:, :, 3, 0])
    back = unpack_corrections(packed, corrected)
    np.testing.assert_array_equal(back[:, :, corrected], volume[:, :, corrected])
    assert not back[:, :, ~corrected].any()
    with pytest.raises(ValueError, match="2 corrected slices"):
        unpack_corrections(packed[:, :, :1], corrected)


def test_location_beside_the_image_or_in_the_user_folder(tmp_path, data_dir):
    image = tmp_path / "scans" / "cine.nii.gz"
    image.parent.mkdir()
    image.write_bytes(b"")
    assert autosave.autosave_path(str(image), "cine", "fp") == image.parent / "cine.sizeloss.npz"
    in_memory = autosave.autosave_path(None, "cine phantom", "fp1")
    assert in_memory.parent == data_dir / "autosave" and in_memory.name.startswith("cine_phantom-")
    assert autosave.autosave_path(None, "cine phantom", "fp2") != in_memory  # other pixels, other file


def test_read_only_directory_falls_back_to_the_user_folder(tmp_path, data_dir, monkeypatch):
    image = tmp_path / "ro" / "cine.nii"
    image.parent.mkdir()
    image.write_bytes(b"")
    monkeypatch.setattr(autosave, "dir_writable", lambda d: False)
    path = autosave.autosave_path(str(image), "cine", "fp")
    assert path.parent == data_dir / "autosave"
    assert path == autosave.user_autosave_path(str(image), "cine", "fp")


def test_write_with_fallback_on_permission_error(tmp_path, data_dir, monkeypatch):
    real_save = autosave.save_work
    blocked = tmp_path / "blocked" / "cine.sizeloss.npz"

    def save(path, work):
        if path == blocked:
            raise PermissionError(13, "Permission denied")
        return real_save(path, work)

    monkeypatch.setattr(autosave, "save_work", save)
    fallback = data_dir / "autosave" / "cine-x.npz"
    assert autosave.write_with_fallback(blocked, _work("fp"), fallback) == fallback
    assert autosave.load_work(fallback) is not None


def test_saved_work_is_found_only_for_the_same_pixels(tmp_path):
    image = np.random.default_rng(0).normal(size=(3, 4, 20, 24)).astype(np.float32)
    fp = autosave.fingerprint(image)
    assert fp == autosave.fingerprint(image.copy())
    other = image.copy()
    other[0, 0, 0, 0] += 1
    assert autosave.fingerprint(other) != fp
    autosave.save_work(autosave.autosave_path(None, "img", fp), _work(fp))
    found = autosave.find_saved_work(None, "img", fp)
    assert found is not None and found[1].fingerprint == fp
    assert autosave.find_saved_work(None, "img", autosave.fingerprint(other)) is None


def test_unreadable_autosave_is_ignored(tmp_path):
    bad = tmp_path / "bad.sizeloss.npz"
    bad.write_bytes(b"not an npz")
    assert autosave.load_work(bad) is None
    assert autosave.load_work(tmp_path / "missing.npz") is None


class _SlowDisk:
    """Stands in for ``save_work``: each write waits until released, and is recorded."""

    def __init__(self, real_save):
        self.real_save = real_save
        self.release = threading.Event()
        self.started = threading.Event()
        self.written: list[tuple[str, str]] = []  # (file name, fingerprint) in write order

    def __call__(self, path, work):
        self.started.set()
        assert self.release.wait(10), "the test never released the write"
        self.written.append((path.name, work.fingerprint))
        return self.real_save(path, work)


def test_writer_returns_at_once_and_writes_only_the_newest_work_per_file(tmp_path, monkeypatch):
    disk = _SlowDisk(autosave.save_work)
    monkeypatch.setattr(autosave, "save_work", disk)
    writer = autosave.AutosaveWriter()
    a, b = tmp_path / "a.sizeloss.npz", tmp_path / "b.sizeloss.npz"
    fallback = tmp_path / "fallback.npz"

    first = writer.submit(a, _work("a1"), fallback)
    assert disk.started.wait(5)  # a1 is being written, and the submitter did not wait for it
    assert writer.busy and not first.done()
    later = [writer.submit(a, _work(f"a{i}"), fallback) for i in (2, 3)]
    other = writer.submit(b, _work("b1"), fallback)
    newest = writer.submit(a, _work("a4"), fallback)
    assert not any(f.done() for f in (*later, other, newest))

    disk.release.set()
    assert writer.flush(timeout=10) and not writer.busy
    # a2 and a3 were superseded before they started; b1 keeps its place before a's newest
    assert disk.written == [("a.sizeloss.npz", "a1"), ("b.sizeloss.npz", "b1"), ("a.sizeloss.npz", "a4")]
    assert first.result() == a and newest.result() == a and other.result() == b
    assert all(f.result() == a for f in later)  # the superseded saves report the save that replaced them
    assert autosave.load_work(a).fingerprint == "a4" and autosave.load_work(b).fingerprint == "b1"
    assert not fallback.exists()
    assert writer.writes == 3


def test_writer_hands_a_failed_write_to_the_submitter_and_keeps_going(tmp_path, monkeypatch):
    real_save = autosave.save_work

    def save(path, work):
        if work.fingerprint == "bad":
            raise PermissionError(13, "Permission denied", str(path))
        return real_save(path, work)

    monkeypatch.setattr(autosave, "save_work", save)
    writer = autosave.AutosaveWriter()
    failed = writer.submit(tmp_path / "x.npz", _work("bad"), tmp_path / "y.npz")
    with pytest.raises(PermissionError, match="Permission denied"):
        failed.result(timeout=10)
    ok = writer.submit(tmp_path / "x.npz", _work("good"), tmp_path / "y.npz")
    assert ok.result(timeout=10) == tmp_path / "x.npz"
    assert writer.flush(timeout=10)
    assert autosave.load_work(tmp_path / "x.npz").fingerprint == "good"
