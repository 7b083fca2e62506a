"""The command line contract: outputs, and every error path (exit 2, one line, no file)."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_sizeloss.cli import main

SHAPE = ["48", "40", "3", "2"]


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    image, gt, seeds = d / "cine.nii.gz", d / "gt.nii.gz", d / "seeds.nii.gz"
    assert main(["phantom", str(image), "--gt", str(gt), "--seed", "3", "--shape", *SHAPE]) == 0
    assert main(["clicks", str(gt), "--out", str(seeds), "--label", "3", "--frames", "0", "--seed", "1"]) == 0
    return d, image, gt, seeds


def run_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_phantom_clicks_and_seeds_line_up(phantom_files):
    d, image, gt, seeds = phantom_files
    img, lab, sd = nib.load(image), nib.load(gt), nib.load(seeds)
    assert img.shape == lab.shape == sd.shape == tuple(int(s) for s in SHAPE)
    np.testing.assert_allclose(sd.affine, img.affine)
    assert np.issubdtype(sd.get_data_dtype(), np.unsignedinteger)
    dots = np.asarray(sd.dataobj) == 1
    assert dots.any()
    assert np.all(np.asarray(lab.dataobj)[dots] == 3)  # every dot inside the LV cavity
    assert not dots[..., 1].any()  # only frame 0 was clicked


def test_bounds_prints_both_units(phantom_files, capsys):
    d, image, gt, seeds = phantom_files
    assert main(["bounds", str(gt), "--label", "3"]) == 0
    out = capsys.readouterr().out
    labels = np.asarray(nib.load(gt).dataobj)
    areas = (labels == 3).sum(axis=(0, 1))
    areas = areas[areas > 0]
    sx, sy = nib.load(gt).header.get_zooms()[:2]
    assert f"lower {1.1 * areas.min():.1f} px  {1.1 * areas.min() * sx * sy:.1f} mm2" in out
    assert f"upper {0.9 * areas.max():.1f} px" in out


def test_train_then_predict(phantom_files, capsys):
    d, image, gt, seeds = phantom_files
    model, pred, pred2 = d / "m.ckpt", d / "pred.nii.gz", d / "pred2.nii.gz"
    code = main([
        "train", str(image), "--seeds", str(seeds), "--bounds", "20", "600", "--steps", "4",
        "--device", "cpu", "--model", str(model), "--pred", str(pred), "--crop", "32", "--batch-size", "2",
        "--absent", "2:1",
    ])
    assert code == 0
    err = capsys.readouterr().err
    assert "step 1/4" in err and "done: 4 steps" in err
    # --seeds: the regions connected to a target dot, as train --pred writes them
    assert main(["predict", str(image), "--model", str(model), "--out", str(pred2), "--device", "cpu",
                 "--seeds", str(seeds)]) == 0
    said = capsys.readouterr().out
    a, b, src = nib.load(pred), nib.load(pred2), nib.load(image)
    assert a.shape == b.shape == src.shape
    np.testing.assert_array_equal(a.affine, src.affine)
    assert int(a.header["sform_code"]) == int(src.header["sform_code"])
    assert set(np.unique(np.asarray(a.dataobj))) <= {0, 1}
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    # without seeds: every region the network predicts, a superset
    pred3 = d / "pred3.nii.gz"
    assert main(["predict", str(image), "--model", str(model), "--out", str(pred3), "--device", "cpu"]) == 0
    every = np.asarray(nib.load(pred3).dataobj) > 0
    kept = np.asarray(a.dataobj) > 0
    assert (every | kept).sum() == every.sum()
    # what --seeds left out is said with its size
    dropped = int(every.sum() - kept.sum())
    assert (f", {dropped} voxels, that no target dot touches" in said) == (dropped > 0)
    # seeds without a target dot anchor nothing: refused in one line, nothing written
    no_dots = d / "no_dots.nii.gz"
    src_seeds = nib.load(seeds)
    nib.save(nib.Nifti1Image(np.zeros(src_seeds.shape, np.uint8), src_seeds.affine), no_dots)
    pred4 = d / "pred4.nii.gz"
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(model), "--out", str(pred4), "--device", "cpu",
                 "--seeds", str(no_dots)]) == 2
    assert "no target dot" in capsys.readouterr().err and not pred4.exists()


def test_predict_with_seeds_says_what_it_left_out(phantom_files, capsys, monkeypatch):
    """A blob no dot touches is left out of the written mask, and the line says how many voxels that was."""
    from napari_sizeloss import trainer

    d, image, gt, seeds = phantom_files
    model = d / "blob.ckpt"
    assert main(["train", str(image), "--seeds", str(seeds), "--bounds", "20", "600", "--steps", "1",
                 "--device", "cpu", "--model", str(model), "--crop", "32", "--batch-size", "2"]) == 0
    dots = np.asarray(nib.load(seeds).dataobj) == 1
    network = np.zeros(dots.shape, np.uint8)
    network[dots] = 1  # the target: the dots themselves
    network[:4, :4, 0, 0] = 1  # and a 16-voxel blob in a corner no dot touches
    assert not dots[:4, :4].any()
    monkeypatch.setattr(trainer.Predictor, "predict", lambda self, image, box="auto", anchors=None: network.copy())
    out = d / "blob.nii.gz"
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--seeds", str(seeds)]) == 0
    said = capsys.readouterr().out
    written = np.asarray(nib.load(out).dataobj)
    np.testing.assert_array_equal(written, dots)
    voxels = int(np.count_nonzero(dots))
    assert f"wrote {out}: {voxels} voxels in the target (regions connected to a target dot) (left out 1 " \
           "predicted region, 16 voxels, that no target dot touches; without --seeds every region is kept)" in said


def test_ema_decay_chooses_the_weights_saved(phantom_files, tmp_path):
    """By default and with --ema-decay 0 the last step's weights are saved; with a decay, their moving average."""
    from napari_sizeloss.checkpoint import load_checkpoint

    d, image, gt, seeds = phantom_files
    common = ["train", str(image), "--seeds", str(seeds), "--bounds", "20", "600", "--steps", "4", "--device", "cpu",
              "--crop", "32", "--batch-size", "2"]
    saved = {}
    for name, extra in (("default", []), ("off", ["--ema-decay", "0"]), ("0.2", ["--ema-decay", "0.2"]),
                        ("0.95", ["--ema-decay", "0.95"])):
        path = tmp_path / f"{name}.ckpt"
        assert main([*common, "--model", str(path), *extra]) == 0
        saved[name] = load_checkpoint(path)
    assert [saved[k].metadata["config"]["ema_decay"] for k in ("default", "off", "0.2", "0.95")] == [None, None, 0.2, 0.95]

    def largest_difference(a, b):
        return max(float((x.float() - b.state_dict[k].float()).abs().max()) for k, x in a.state_dict.items())

    assert largest_difference(saved["default"], saved["off"]) == 0  # the same training, the same last weights
    assert largest_difference(saved["0.95"], saved["off"]) > 1e-4  # an average, not the last weights
    assert largest_difference(saved["0.2"], saved["off"]) > 1e-4
    assert largest_difference(saved["0.95"], saved["0.2"]) > 1e-6  # 0.2 weighs the last steps more than the warm-up


def test_resume_lr_factor_sets_the_learning_rate_a_continued_run_starts_at(phantom_files, tmp_path, capsys):
    """A fresh run starts at --lr; --init continues at half of it by default, at --lr x F with --resume-lr-factor."""
    from napari_sizeloss.checkpoint import load_checkpoint

    d, image, gt, seeds = phantom_files
    common = ["train", str(image), "--seeds", str(seeds), "--bounds", "20", "600", "--steps", "2", "--device", "cpu",
              "--crop", "32", "--batch-size", "2", "--lr", "0.004"]
    first = tmp_path / "fresh.ckpt"  # the fresh run's model, which the other two continue
    firsts = {}
    for name, extra in (("fresh", []), ("default", ["--init", str(first)]),
                        ("quarter", ["--init", str(first), "--resume-lr-factor", "0.25"])):
        capsys.readouterr()
        assert main([*common, "--model", str(tmp_path / f"{name}.ckpt"), *extra]) == 0
        firsts[name] = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("step 1/2"))
    assert "lr 0.004 " in firsts["fresh"]
    assert "lr 0.002 " in firsts["default"]
    assert "lr 0.001 " in firsts["quarter"]
    assert load_checkpoint(tmp_path / "quarter.ckpt").metadata["config"]["resume_lr_factor"] == 0.25


def test_train_errors_leave_no_file(phantom_files, tmp_path, capsys):
    d, image, gt, seeds = phantom_files
    model = tmp_path / "m.ckpt"
    base = ["train", str(image), "--seeds", str(seeds), "--model", str(model), "--steps", "1", "--device", "cpu"]
    cases = {
        "contradictory bounds": (base + ["--bounds", "500", "100"], "lower"),
        "negative bound": (base + ["--bounds", "-5", "100"], "lower"),
        "bound above image": (base + ["--bounds", "5", "1e9"], "exceeds"),
        "unknown device": (base[:-1] + ["tpu", "--bounds", "5", "100"], "tpu"),
        "cuda absent": (base[:-1] + ["cuda", "--bounds", "5", "100"], "CUDA"),
        "bad absent": (base + ["--bounds", "5", "100", "--absent", "99"], "slice 99"),
        "absent clash": (base + ["--bounds", "5", "100", "--absent", "1"], "tagged"),
        "ema decay of 1": (base + ["--bounds", "5", "100", "--ema-decay", "1"], "--ema-decay"),
        "negative ema decay": (base + ["--bounds", "5", "100", "--ema-decay", "-0.5"], "--ema-decay"),
        "resume factor without --init": (base + ["--bounds", "5", "100", "--resume-lr-factor", "0.25"], "--init"),
        "resume factor above 1": (base + ["--bounds", "5", "100", "--init", str(d / "any.ckpt"),
                                          "--resume-lr-factor", "2"], "(0, 1]"),
        "resume factor of 0": (base + ["--bounds", "5", "100", "--init", str(d / "any.ckpt"),
                                       "--resume-lr-factor", "0"], "(0, 1]"),
    }
    for name, (argv, needle) in cases.items():
        line = run_error(argv, capsys)
        assert needle in line, (name, line)
        assert not model.exists(), name


def test_input_errors(phantom_files, tmp_path, capsys):
    d, image, gt, seeds = phantom_files
    model = str(tmp_path / "m.ckpt")
    text = tmp_path / "notes.nii.gz"
    text.write_text("not a nifti")
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(nib.load(image).shape, np.uint8), nib.load(image).affine), empty)
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.uint8), np.eye(4)), small)
    common = ["--bounds", "5", "100", "--model", model, "--steps", "1", "--device", "cpu"]
    assert "missing.nii.gz" in run_error(["train", str(tmp_path / "missing.nii.gz"), "--seeds", str(seeds), *common], capsys)
    assert "notes.nii.gz" in run_error(["train", str(text), "--seeds", str(seeds), *common], capsys)
    assert "shape" in run_error(["train", str(image), "--seeds", str(small), *common], capsys)
    assert "dot" in run_error(["train", str(image), "--seeds", str(empty), *common], capsys)
    assert not (tmp_path / "m.ckpt").exists()


def test_outputs_are_checked_before_work(phantom_files, tmp_path, capsys):
    d, image, gt, seeds = phantom_files
    before = image.read_bytes()
    line = run_error(["predict", str(image), "--model", str(d / "nope.ckpt"), "--out", str(image)], capsys)
    assert "overwrite" in line
    assert image.read_bytes() == before
    line = run_error(["phantom", str(tmp_path / "no" / "dir" / "x.nii.gz")], capsys)
    assert "does not exist" in line
    line = run_error(["phantom", str(tmp_path / "x.png")], capsys)
    assert ".nii" in line
    line = run_error(["train", str(image), "--seeds", str(seeds), "--bounds", "5", "100",
                      "--model", str(tmp_path), "--steps", "1"], capsys)
    assert "directory" in line


def test_hostile_checkpoint_is_refused(phantom_files, tmp_path, capsys):
    d, image, gt, seeds = phantom_files
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    import pickle

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(Evil()))
    out = tmp_path / "mask.nii.gz"
    run_error(["predict", str(image), "--model", str(evil), "--out", str(out)], capsys)
    assert not marker.exists() and not out.exists()


def test_console_script_reports_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "napari_sizeloss.cli", "bounds", str(tmp_path / "missing.nii.gz"), "--label", "3"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_tta_reaches_the_predictions_of_train_and_predict(phantom_files, capsys, predicted_tta):
    """--tta sets the views every prediction averages over; without it: flips (train --paper: none)."""
    d, image, gt, seeds = phantom_files
    seen = predicted_tta
    model, pred = d / "tta.ckpt", d / "tta_pred.nii.gz"
    common = ["--seeds", str(seeds), "--bounds", "20", "600", "--steps", "1", "--device", "cpu",
              "--crop", "32", "--batch-size", "2"]
    for extra, expected in (([], "flips"), (["--tta", "dihedral"], "dihedral"), (["--paper"], "none"),
                            (["--paper", "--tta", "flips"], "flips")):
        seen.clear()
        pred.unlink(missing_ok=True)
        model.unlink(missing_ok=True)
        assert main(["train", str(image), *common, "--model", str(model), "--pred", str(pred), *extra]) == 0
        assert seen == [expected], extra
    out = d / "tta_out.nii.gz"
    for extra, expected in (([], "flips"), (["--tta", "none"], "none")):
        seen.clear()
        out.unlink(missing_ok=True)
        assert main(["predict", str(image), "--model", str(model), "--out", str(out), "--device", "cpu", *extra]) == 0
        assert seen == [expected]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(image), "--model", str(model), "--out", str(d / "x.nii.gz"), "--tta", "mirror"])
    assert exit_.value.code == 2 and "invalid choice: 'mirror'" in capsys.readouterr().err
    assert not (d / "x.nii.gz").exists()
