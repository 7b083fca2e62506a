"""The demo's simulated user: which slice-frames it tags target-absent."""

import numpy as np
import pytest

from napari_sizeloss.demo import TAG_STRATEGIES, absent_tags


def _target():
    target = np.zeros((6, 6, 4, 3), bool)  # (X, Y, Z, T)
    target[2:4, 2:4, :2, :] = True  # slices 0-1: present in every frame
    target[2:4, 2:4, 2, 0] = True  # slice 2: present in frame 0 only
    return target  # slice 3: absent in every frame


def test_every_frame_tags_each_slice_frame_without_the_target():
    tags = absent_tags(_target(), "every-frame")
    expected = np.zeros((4, 3), bool)
    expected[2, 1:] = True
    expected[3, :] = True
    np.testing.assert_array_equal(tags, expected)


def test_clicked_frames_tags_only_the_frames_the_user_annotates():
    tags = absent_tags(_target(), "clicked-frames", frames=[0, 2])
    expected = np.zeros((4, 3), bool)
    expected[3, 0] = True  # frame 0: only slice 3 is empty
    expected[2:, 2] = True  # frame 2: slices 2 and 3
    np.testing.assert_array_equal(tags, expected)
    assert not tags[:, 1].any()  # an unclicked frame keeps [0, upper]


def test_no_tags_and_refusals():
    assert not absent_tags(_target(), "none").any()
    assert absent_tags(_target(), "none").shape == (4, 3)
    assert set(TAG_STRATEGIES) == {"none", "clicked-frames", "every-frame"}
    with pytest.raises(ValueError, match="one of"):
        absent_tags(_target(), "oracle")
    with pytest.raises(ValueError, match="clicked frames"):
        absent_tags(_target(), "clicked-frames")
    with pytest.raises(ValueError, match=r"\(X, Y, Z, T\)"):
        absent_tags(_target()[..., 0], "none")


def test_the_demo_command_trains_with_the_users_tags_and_scores(tmp_path, capsys, monkeypatch):
    from napari_sizeloss import trainer
    from napari_sizeloss.cli import main
    from napari_sizeloss.demo import make_demo_case

    seen = []
    real_train = trainer.train

    def recording_train(*args, absent=None, **kwargs):
        seen.append(absent)
        return real_train(*args, absent=absent, **kwargs)

    monkeypatch.setattr(trainer, "train", recording_train)
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "2", "--threads", "1", "--device", "cpu", "--tags", "every-frame",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    case = make_demo_case(seed=0)
    expected = absent_tags(case.target, "every-frame")
    assert f"{int(expected.sum())} slice-frames tagged target-absent (every-frame)" in text
    np.testing.assert_array_equal(seen[-1], expected)
    assert "| CE + size penalty |" in text
    assert {p.name for p in out.iterdir()} >= {"image.nii.gz", "gt.nii.gz", "seeds.nii.gz", "pred.nii.gz", "model.ckpt"}

    assert main(["demo", "--steps", "1", "--threads", "1", "--device", "cpu"]) == 0
    assert not seen[-1].any() and "tagged" not in capsys.readouterr().out  # the default: no tags


def test_demo_over_several_cases_prints_each_case_and_a_summary_that_matches_them(tmp_path, capsys):
    from napari_sizeloss.cli import main

    out = tmp_path / "cases"
    assert main(["demo", "--steps", "1", "--threads", "1", "--device", "cpu", "--cases", "2", "--seed", "3",
                 "--compare", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| 3 ") or line.startswith("| 4 ")]
    assert [(int(r[0]), r[1].strip()) for r in rows] == [
        (3, "CE + size penalty"), (3, "CE only"), (4, "CE + size penalty"), (4, "CE only")]
    assert "phantom seed 3:" in text and "phantom seed 4:" in text
    for name in ("CE + size penalty", "CE only"):
        dice = sorted(float(r[2]) for r in rows if r[1].strip() == name)
        network = sorted(float(r[3]) for r in rows if r[1].strip() == name)
        summary = next(line for line in text.splitlines() if line.startswith(f"{name}: 3D Dice"))
        assert f"{dice[0]:.3f}-{dice[1]:.3f} (median {np.median(dice):.3f}), " in summary
        assert f"{sum(d >= 0.85 for d in dice)} of 2 at 0.85 or more" in summary
        assert f"every region the network predicts: {network[0]:.3f}-{network[1]:.3f}" in summary
    # one folder per case, with the size-penalty run's files
    assert sorted(p.name for p in out.iterdir()) == ["seed-3", "seed-4"]
    assert (out / "seed-4" / "pred.nii.gz").is_file()


def test_demo_refuses_fewer_than_one_case(capsys):
    from napari_sizeloss.cli import main

    assert main(["demo", "--cases", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --cases must be at least 1, got 0"


def test_demo_refuses_an_out_it_would_spoil_before_training(tmp_path, capsys):
    """A file as --out, or a folder holding a file the demo writes: one line, rc 2, nothing trained or changed."""
    import hashlib

    from napari_sizeloss.cli import main

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["demo", "--steps", "1", "--threads", "1", "--out", str(a_file)]) == 2
    out, err = capsys.readouterr()
    assert "training:" not in out and err.count("\n") == 1 and "it is a file" in err
    assert a_file.read_text() == "mine"

    scans = tmp_path / "scans"
    scans.mkdir()
    scan = scans / "image.nii.gz"
    scan.write_bytes(b"someone's scan")
    digest = hashlib.sha256(scan.read_bytes()).hexdigest()
    assert main(["demo", "--steps", "1", "--threads", "1", "--out", str(scans)]) == 2
    out, err = capsys.readouterr()
    assert "training:" not in out and err.strip() == (
        f"error: {scans} already holds image.nii.gz: give --out a new or empty folder")
    assert hashlib.sha256(scan.read_bytes()).hexdigest() == digest and sorted(scans.iterdir()) == [scan]

    # several cases: the check covers every case's folder before the first trains
    (tmp_path / "many" / "seed-1").mkdir(parents=True)
    (tmp_path / "many" / "seed-1" / "pred.nii.gz").write_bytes(b"x")
    assert main(["demo", "--steps", "1", "--threads", "1", "--cases", "2", "--out", str(tmp_path / "many")]) == 2
    out, err = capsys.readouterr()
    assert "training:" not in out and "seed-1 already holds pred.nii.gz" in err
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["seed-1"]  # no seed-0 folder made
