"""The widget with real training on a small phantom: train, preview, stop, correct, export, model files.

Each test trains for a handful of steps on a (64, 56, 4, 3) phantom (one CPU
thread), and waits for the GUI with explicit timeouts.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import SMALL_SHAPE, add_layers, open_widget
from widget_helpers import click, lv_centre, show_slice

from napari_sizeloss.nifti import save_image
from napari_sizeloss.phantom import make_cine_phantom

TRAIN_TIMEOUT_MS = 60_000


def configure(widget, steps: int, preview_every: int = 1) -> None:
    """Small, fast settings through the Advanced panel (as a user would)."""
    widget.settings.expand(animate=False)
    widget.settings.ensure_loaded()
    widget.settings.steps.setValue(steps)
    widget.settings.batch_size.setValue(2)
    widget.settings.crop.setValue(48)
    widget.settings.preview_every.setValue(preview_every)


def add_dots(viewer, widget, gt, slices=((1, 0), (2, 1))) -> None:
    """Target dots at the LV centre of a few slices, one background dot in a corner."""
    image = widget.image_layer
    for z, t in slices:
        show_slice(viewer, image, z, t)
        click(viewer, widget.seeds_layer, *lv_centre(gt, z, t))
    widget.seeds_panel.background_button.click()
    click(viewer, widget.seeds_layer, 2, 2)
    widget.seeds_panel.target_button.click()


def set_bounds_from_truth(widget, gt) -> None:
    """Bounds spanning the true LV areas (what the estimate button computes), set with the spin boxes."""
    areas = (np.asarray(gt.data) == 3).sum(axis=(-2, -1)) * widget.geometry.pixel_area_mm2
    areas = areas[areas > 0]
    widget.bounds_panel.upper_spin.setValue(float(areas.max()))
    widget.bounds_panel.lower_spin.setValue(float(areas.min()))


@pytest.fixture
def nifti_phantom(tmp_path):
    """The small phantom written to NIfTI (image and ground truth), as a user would have it on disk."""
    phantom = make_cine_phantom(SMALL_SHAPE, seed=0)
    image_path = tmp_path / "cine.nii.gz"
    save_image(image_path, phantom.image, phantom.affine, frame_time_ms=phantom.frame_time_ms)
    gt_img = phantom.to_nifti()[1]
    gt_path = tmp_path / "cine_gt.nii.gz"
    nib.save(gt_img, str(gt_path))
    return image_path, gt_path


def wait_idle(qtbot, widget, timeout=TRAIN_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_train_preview_stop_correct_export(make_napari_viewer, qtbot, nifti_phantom, tmp_path, monkeypatch):
    image_path, gt_path = nifti_phantom
    viewer = make_napari_viewer()
    [image] = viewer.open(str(image_path), plugin="napari-sizeloss")
    [gt] = viewer.open(str(gt_path), plugin="napari-sizeloss")
    gt.visible = False
    widget = open_widget(viewer)
    widget.image_combo.setCurrentText(image.name)
    assert widget.image_layer is image
    configure(widget, steps=2000, preview_every=1)
    add_dots(viewer, widget, gt)
    set_bounds_from_truth(widget, gt)
    show_slice(viewer, image, 2, 1)

    # --- train; the preview of the slice shown appears while training runs
    layers_before = list(viewer.layers)
    widget.train_button.click()
    assert list(viewer.layers) == layers_before  # the prediction layer was made with the image, not now
    assert widget.job == "train" and not widget.train_button.isEnabled() and widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: widget.tracker is not None and widget.tracker.has_prediction, timeout=TRAIN_TIMEOUT_MS)
    prediction = viewer.layers[f"{image.name} prediction"]
    assert prediction.data.shape == image.data.shape
    np.testing.assert_allclose(prediction.scale, image.scale)
    qtbot.waitUntil(lambda: len(widget.loss_plot.steps) >= 3, timeout=TRAIN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: "ETA" in widget.progress.format(), timeout=TRAIN_TIMEOUT_MS)
    assert all(np.isfinite(widget.loss_plot.ce)) and all(v >= 0 for v in widget.loss_plot.size)

    # --- stop mid-run: training ends within a step, then the whole volume is predicted
    widget.stop_button.click()
    wait_idle(qtbot, widget)
    session = widget.session
    steps_round1 = session.total_steps_done
    assert 3 <= steps_round1 < 2000
    assert widget.progress.format().startswith("stopped")
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()
    np.testing.assert_array_equal(np.asarray(prediction.data), widget.tracker.baseline)
    states = widget.size_table.states
    assert states is not None and states.shape == (4, 3)

    # --- the user fixes slice z=3, t=2 with the brush and eraser, then uses the correction
    show_slice(viewer, image, 3, 2)
    prediction.paint((2, 3, 20, 30), 1, refresh=True)  # napari's brush: (t, z, y, x), label 1
    prediction.brush_size = 1
    prediction.paint((2, 3, 0, 0), 0, refresh=True)  # eraser
    edited = widget.edited_slices()
    assert edited[3, 2] and edited.sum() == 1
    corrected_mask = np.asarray(prediction.data[2, 3]).copy()
    widget.settings.steps.setValue(3)
    widget.corrections_button.click()
    assert widget.job == "train"
    wait_idle(qtbot, widget)
    assert widget.session is session  # continued from the current weights
    assert session.total_steps_done == steps_round1 + 3
    assert widget.supervision.corrected[3, 2] and widget.supervision.corrected.sum() == 1
    np.testing.assert_array_equal(prediction.data[2, 3], corrected_mask)  # the correction stays shown
    assert "✎" in widget.size_table.table.item(3, 2).text()

    # --- export through the button (file dialog answered), read back with nibabel
    out = tmp_path / "exported" / "cine_mask.nii.gz"
    out.parent.mkdir()
    monkeypatch.setattr(
        "napari_sizeloss._qt.model_io.QFileDialog.getSaveFileName", lambda *a, **k: (str(out), "")
    )
    widget.export_button.click()
    assert out.exists(), widget.status.text()
    written, source = nib.load(str(out)), nib.load(str(image_path))
    assert written.shape == source.shape == (64, 56, 4, 3)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert int(written.header["sform_code"]) == int(source.header["sform_code"])
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(prediction.data).T)

    # --- never over the source image; an unwritable path is a message, not a traceback
    before = image_path.read_bytes()
    assert widget.export_masks(str(image_path)) is None
    assert "source image" in widget.status.text()
    assert image_path.read_bytes() == before
    assert widget.export_masks(str(tmp_path / "missing" / "dir" / "m.nii.gz")) is None
    assert "does not exist" in widget.status.text()

    # --- the dots, tags and corrections were autosaved beside the image
    widget.autosave_now()
    assert (image_path.parent / "cine.sizeloss.npz").exists()


def test_a_slice_painted_before_any_training_is_full_supervision(viewer, widget, qtbot):
    """The prediction layer exists from the start: a slice painted there trains as a correction."""
    gt = viewer.layers["cine phantom ground truth"]
    prediction = viewer.layers["cine phantom prediction"]
    configure(widget, steps=3)
    add_dots(viewer, widget, gt)
    set_bounds_from_truth(widget, gt)
    truth = (np.asarray(gt.data[0, 2]) == 3).astype(np.uint8)  # slice z=2 of frame t=0: no dots there
    assert truth.sum() > 20
    prediction.data[0, 2] = truth  # as napari's brush would leave it, all at once
    assert widget.edited_slices()[2, 0] and widget.edited_slices().sum() == 1
    assert widget.use_corrections() is True  # trains a first round
    wait_idle(qtbot, widget)
    assert widget.session is not None and widget.session.total_steps_done == 3
    assert widget.supervision.corrected[2, 0] and widget.supervision.corrected.sum() == 1
    np.testing.assert_array_equal(widget.supervision.corrections[:, :, 2, 0], truth.T)  # (X, Y)
    # what the round trained on: the painted slice, and nothing on the others
    trained_on = widget.session._corrections & widget.session._corrected[None, None]
    np.testing.assert_array_equal(trained_on[:, :, 2, 0], truth.T > 0)
    assert trained_on.sum() == truth.sum()
    np.testing.assert_array_equal(prediction.data[0, 2], truth)  # kept over the network's prediction
    assert widget.tracker.has_prediction  # the other slices were predicted


def test_a_removed_prediction_layer_is_made_again_by_the_next_round(viewer, widget, qtbot):
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=3)
    add_dots(viewer, widget, gt)
    set_bounds_from_truth(widget, gt)
    viewer.layers.remove("cine phantom prediction")  # the user deletes the empty layer
    assert widget.tracker is None
    assert widget.train()
    wait_idle(qtbot, widget)
    prediction = viewer.layers["cine phantom prediction"]
    assert widget.tracker is not None and widget.tracker.layer is prediction and widget.tracker.has_prediction
    np.testing.assert_array_equal(np.asarray(prediction.data), widget.tracker.baseline)
    names = [layer.name for layer in viewer.layers]
    assert names.index("cine phantom prediction") < names.index("cine phantom seeds")


def test_save_load_model_and_predict_another_volume(viewer, widget, qtbot, tmp_path, small_phantom, monkeypatch):
    import threading

    from napari_sizeloss.compute_thread import compute_thread_ident
    from napari_sizeloss.network import ENet
    from napari_sizeloss.trainer import TrainingSession

    # every network pass and the checkpoint write run on the one compute thread
    threads = {"forward": set(), "save": set()}
    forward, save = ENet.forward, TrainingSession.save

    def recording_forward(self, x):
        threads["forward"].add(threading.get_ident())
        return forward(self, x)

    def recording_save(self, *args, **kwargs):
        threads["save"].add(threading.get_ident())
        return save(self, *args, **kwargs)

    monkeypatch.setattr(ENet, "forward", recording_forward)
    monkeypatch.setattr(TrainingSession, "save", recording_save)

    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=2)
    add_dots(viewer, widget, gt)
    set_bounds_from_truth(widget, gt)
    widget.train()
    wait_idle(qtbot, widget)
    ckpt = widget.save_model(str(tmp_path / "model.ckpt"))
    assert ckpt is not None and (tmp_path / "model.ckpt").exists()

    assert widget.load_model(str(tmp_path / "model.ckpt"))
    wait_idle(qtbot, widget)
    assert widget.checkpoint_path == str(tmp_path / "model.ckpt") and widget.session is None

    other = make_cine_phantom((48, 40, 3, 2), seed=5)
    layer = viewer.add_image(other.image.T.copy(), name="other subject", scale=(30.0, 10.0, 6.0, 6.0))
    widget.image_combo.setCurrentText("other subject")
    assert widget.geometry.shape == (48, 40, 3, 2)
    show_slice(viewer, layer, z=2, t=1)
    reports, on_progress = [], widget._on_prediction_progress

    def recording_progress(item):  # what the GUI shows while the volume is predicted
        on_progress(item)
        shown = np.asarray(viewer.layers["other subject prediction"].data)[1, 2].copy()  # (t, z) = (1, 2)
        reports.append((item.done, item.total, item.z, item.t, widget.tracker.has_prediction, shown,
                        widget.progress.value(), widget.progress.maximum()))

    widget._on_prediction_progress = recording_progress
    assert not widget.tracker.has_prediction  # a new layer for this image
    assert widget.predict()
    wait_idle(qtbot, widget)
    prediction = viewer.layers["other subject prediction"]
    # the slice on screen came first and alone, and was shown before the rest of the volume
    assert reports[0][:5] == (1, 6, 2, 1, True) and reports[-1][:2] == (6, 6)
    np.testing.assert_array_equal(reports[0][5], np.asarray(prediction.data)[1, 2])
    assert reports[-1][6:] == (6, 6)  # the progress bar followed the slices
    assert "predicted 'other subject'" in widget.status.text()  # no longer "predicting…"
    assert widget.progress.value() == widget.progress.maximum() and widget.progress.format() == "prediction done"
    assert prediction.data.shape == layer.data.shape
    assert set(np.unique(prediction.data)) <= {0, 1}
    assert widget.tracker.has_prediction
    assert threads["forward"] == threads["save"] == {compute_thread_ident()}
    assert threading.get_ident() not in threads["forward"]


def test_checkpoint_for_another_number_of_classes_is_refused(widget, qtbot, tmp_path):
    from napari_sizeloss.checkpoint import save_checkpoint
    from napari_sizeloss.network import ENet

    path = tmp_path / "three_classes.ckpt"
    save_checkpoint(path, ENet(in_channels=1, num_classes=3))
    assert widget.load_model(str(path))
    wait_idle(qtbot, widget)
    assert "class" in widget.status.text()
    assert widget.checkpoint_path is None
    assert widget.load_model_button.isEnabled() and widget.train_button.isEnabled()


def test_worker_error_is_a_notification_and_the_widget_recovers(viewer, widget, qtbot, tmp_path):
    """A checkpoint deleted between Load and Train: the worker fails, the user is told, nothing hangs."""
    from napari.utils.notifications import notification_manager

    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=2)
    add_dots(viewer, widget, gt, slices=((1, 0),))
    set_bounds_from_truth(widget, gt)
    widget.train()
    wait_idle(qtbot, widget)
    path = widget.save_model(str(tmp_path / "gone.ckpt"))
    widget.load_model(path)
    wait_idle(qtbot, widget)
    (tmp_path / "gone.ckpt").unlink()

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        widget.train()
        wait_idle(qtbot, widget)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert any("gone.ckpt" in str(n.message) for n in seen)
    assert "gone.ckpt" in widget.status.text()
    assert widget.train_button.isEnabled() and widget.job is None


def start_endless_training(viewer, qtbot):
    """Open the widget, click one slice's dots and start a 100 000-step round; returns (widget, session, finished)."""
    widget = open_widget(viewer)
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=100_000)
    add_dots(viewer, widget, gt, slices=((1, 0),))
    set_bounds_from_truth(widget, gt)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.loss_plot.steps) >= 1, timeout=TRAIN_TIMEOUT_MS)
    finished = []
    widget.worker.finished.connect(lambda: finished.append(True))
    return widget, widget.session, finished


def test_closing_the_widget_stops_training(viewer, qtbot):
    widget, session, finished = start_endless_training(viewer, qtbot)
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    qtbot.waitUntil(lambda: bool(finished), timeout=TRAIN_TIMEOUT_MS)
    assert session.stopping
    assert session.total_steps_done < 100_000


def test_closing_the_viewer_stops_training(make_napari_viewer, small_phantom, qtbot):
    viewer = make_napari_viewer()
    add_layers(viewer, small_phantom)
    _, session, finished = start_endless_training(viewer, qtbot)
    viewer.close()
    qtbot.waitUntil(lambda: bool(finished), timeout=TRAIN_TIMEOUT_MS)
    assert session.total_steps_done < 100_000


def test_compile_checkbox_trains_through_torch_compile(viewer, widget, qtbot, monkeypatch):
    """Ticking Compile in the Advanced panel: the status says it compiles first (in a child process), the round runs compiled."""
    import napari_sizeloss.compiled as compiled

    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", "aot_eager")  # the same tracing, without the C++ build
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=2)
    assert widget.settings.compile.isEnabled() and not widget.settings.compile.isChecked()
    widget.settings.compile.setChecked(True)
    add_dots(viewer, widget, gt, slices=((1, 0),))
    set_bounds_from_truth(widget, gt)
    assert widget.train()
    assert "compiling" in widget.status.text() and "Stop cancels" in widget.status.text()
    assert widget.progress.format() == "compiling…"  # not "starting…" for minutes
    wait_idle(qtbot, widget)
    wrapper = widget.session._compiled
    assert isinstance(wrapper, compiled.CompiledForward) and wrapper.compiled and wrapper.calls == 2
    # the widget compiles in a child process first (the window stays responsive), then here
    assert widget.session.config.compile_ahead
    widget.settings.compile.setChecked(False)  # off again: the next round is eager
    widget.train()
    assert "compiling" not in widget.status.text()
    wait_idle(qtbot, widget)
    assert wrapper.calls == 2 and widget.session.total_steps_done == 4


def test_stop_during_the_compile_cancels_it_and_keeps_the_shown_prediction(viewer, widget, qtbot, monkeypatch):
    """Stop while the child process compiles: the round ends at once, and no untrained prediction replaces anything."""
    import time

    import napari_sizeloss.compiled as compiled

    waited = []

    def slow_compile_ahead(model, shape, cancel, **kw):
        start = time.monotonic()
        while not cancel():
            assert time.monotonic() - start < 60, "Stop never reached the compile"
            time.sleep(0.01)
        waited.append(time.monotonic() - start)
        return None

    monkeypatch.setattr(compiled, "compile_ahead", slow_compile_ahead)
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=2)
    widget.settings.compile.setChecked(True)
    add_dots(viewer, widget, gt, slices=((1, 0),))
    set_bounds_from_truth(widget, gt)
    assert widget.train()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=TRAIN_TIMEOUT_MS)
    widget.stop_button.click()
    wait_idle(qtbot, widget)
    assert len(waited) == 1
    assert widget.session.total_steps_done == 0 and widget.session._compiled.calls == 0
    assert widget.progress.format().startswith("stopped: 0 steps") and "predicting" not in widget.progress.format()
    assert "before the first step" in widget.status.text()
    # nothing was predicted: the prediction layer holds no untrained network's mask
    assert widget.tracker is None or not widget.tracker.has_prediction


def test_compile_checkbox_is_disabled_without_a_compiler(viewer, monkeypatch, qtbot):
    import napari_sizeloss.compiled as compiled

    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    widget = open_widget(viewer)
    widget.settings.ensure_loaded()
    qtbot.waitUntil(lambda: widget.settings.devices_known, timeout=20_000)  # checked on the compute thread
    box = widget.settings.compile
    assert not box.isEnabled() and not box.isChecked()
    assert "C++ compiler" in box.toolTip()
    assert widget.settings.overrides()["compile"] is False


def test_a_correction_larger_than_the_upper_bound_raises_it(viewer, widget, qtbot):
    """Use corrections widens bounds that the drawn slice contradicts, visibly, and trains with them."""
    gt = viewer.layers["cine phantom ground truth"]
    prediction = viewer.layers["cine phantom prediction"]
    configure(widget, steps=2)
    add_dots(viewer, widget, gt)
    truth = (np.asarray(gt.data[0, 1]) == 3).astype(np.uint8)  # slice z=1 of frame t=0
    area = float(truth.sum() * widget.geometry.pixel_area_mm2)  # mm^2: the phantom has a spacing
    assert widget.bounds_panel.unit == "mm2"
    widget.bounds_panel.set_bounds(0.2 * area, 0.6 * area)  # an upper bound from a smaller heart
    lower_before, upper_before = widget.bounds_panel.bounds()  # as the spin boxes round them
    assert upper_before < area
    prediction.data[0, 1] = truth
    notified = []
    widget._message = lambda text, level="info", notify=True, _orig=widget._message: (
        notified.append((text, level, notify)), _orig(text, level, notify=False))
    assert widget.use_corrections() is True
    wait_idle(qtbot, widget)
    lower, upper = widget.bounds_panel.bounds()
    assert lower == lower_before  # the lower bound admitted the slice already
    decimals = widget.bounds_panel.upper_spin.decimals()
    assert area <= upper < area + 10 ** -decimals  # raised to the drawn area, rounded outwards
    assert any(
        "upper bound raised from" in text and f"to {upper:.{decimals}f} mm²" in text and notify
        for text, _, notify in notified
    ), notified
    # the round trained with the widened bound (in pixels)
    assert widget.session.bounds_px.upper == pytest.approx(upper / widget.geometry.pixel_area_mm2)

    # bounds that already hold every corrected slice are left alone
    widget.bounds_panel.set_bounds(0.2 * area, 2.0 * area)
    kept = widget.bounds_panel.bounds()
    prediction.data[0, 2] = (np.asarray(gt.data[0, 2]) == 3).astype(np.uint8)  # correct another slice
    notified.clear()
    assert widget.use_corrections() is True
    wait_idle(qtbot, widget)
    assert widget.bounds_panel.bounds() == kept
    assert not any("bound" in text for text, _, _ in notified)

    # contradictory bounds are not "widened" into something else: Train refuses them with its own line
    widget.bounds_panel.set_bounds(2.0 * area, 0.5 * area)
    before = widget.bounds_panel.bounds()
    prediction.data[0, 3] = (np.asarray(gt.data[0, 3]) == 3).astype(np.uint8)
    assert widget.use_corrections() is False
    assert widget.bounds_panel.bounds() == before
    assert "is above the upper bound" in widget.status.text()


def test_keep_checkbox_drops_regions_no_dot_touches_from_the_prediction_layer(viewer, widget, qtbot, monkeypatch):
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=2)
    assert widget.settings.keep_connected.isChecked()  # on by default
    add_dots(viewer, widget, gt)
    set_bounds_from_truth(widget, gt)
    widget.train()
    wait_idle(qtbot, widget)
    session = widget.session
    assert session.config.keep_connected
    # a network output with the region under the dots and a blob that no dot touches, in a corner
    anchors = session.anchors()
    x, y = (int(v) for v in np.argwhere(anchors)[0][:2])
    probs = np.zeros(anchors.shape, np.float32)
    probs[x - 2 : x + 3, y - 2 : y + 3] = 0.9
    probs[-4:, -4:, 0, 0] = 0.9
    monkeypatch.setattr(session, "_predict_probs", lambda image4, tta=None: probs)

    def shown():
        return np.asarray(viewer.layers["cine phantom prediction"].data).T > 0  # (X, Y, Z, T)

    assert widget.predict()
    wait_idle(qtbot, widget)
    kept = probs > 0.5
    kept[-4:, -4:, 0, 0] = False
    np.testing.assert_array_equal(shown(), kept)
    assert "left out 1 predicted region (16 px) that no target dot touches" in widget.status.text()
    widget.settings.keep_connected.setChecked(False)
    assert widget.predict()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(shown(), probs > 0.5)
    assert "left out" not in widget.status.text()
    assert widget.settings.overrides()["keep_connected"] is False  # the next round's setting too


def test_test_time_views_setting_reaches_training_and_predict(viewer, widget, qtbot, monkeypatch):
    """The Advanced panel's *Test-time views*: the next round's config, and Predict without training again."""
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=2)
    assert widget.settings.tta_mode() == "flips"  # the default
    assert widget.settings.tta.currentText() == "flips (4 views)"
    widget.settings.tta.setCurrentIndex(widget.settings.tta.findText("dihedral (8 views)"))
    assert widget.settings.overrides()["tta"] == "dihedral"
    add_dots(viewer, widget, gt)
    set_bounds_from_truth(widget, gt)
    widget.train()
    wait_idle(qtbot, widget)
    session = widget.session
    assert session.config.tta == "dihedral"
    asked = []

    def probs(image4, tta=None):
        asked.append(tta)
        return np.zeros(image4.shape, np.float32)

    monkeypatch.setattr(session, "_predict_probs", probs)
    widget.settings.set_tta_mode("none")
    assert widget.predict()
    wait_idle(qtbot, widget)
    assert asked == ["none"]


def test_predict_job_with_a_loaded_model_reports_what_keep_left_out(monkeypatch):
    """Predict with a loaded model: the volume keeps the regions the shown dots touch and counts the rest."""
    import napari_sizeloss.trainer as trainer
    from napari_sizeloss._qt.jobs import predict_job

    shape = (20, 16, 3, 2)
    probs = np.zeros(shape, np.float32)
    probs[4:9, 4:9, :, :] = 0.9  # the target, through every slice and frame
    probs[15:18, 12:15, 2, 1] = 0.8  # a blob on one slice-frame: 9 px
    probs[15:17, 1:3, 0, 0] = 0.8  # another: 4 px

    class FakePredictor:
        threshold = 0.5

        @classmethod
        def from_checkpoint(cls, path, device, tta):
            return cls()

        def iter_probabilities(self, image, first=None):
            for z in range(shape[2]):
                for t in range(shape[3]):
                    yield np.array([[z, t]]), probs[:, :, z, t][..., None]

    monkeypatch.setattr(trainer, "Predictor", FakePredictor)
    anchors = np.zeros(shape, bool)
    anchors[6, 6, 1, 0] = anchors[6, 6, 0, 0] = True  # target dots on two slices

    def run(**kwargs):
        job = predict_job(np.zeros(shape, np.float32), checkpoint="model.ckpt", **kwargs)
        while True:
            try:
                next(job)
            except StopIteration as stop:
                return stop.value

    first = next(predict_job(np.zeros(shape, np.float32), checkpoint="model.ckpt", anchors=anchors, preview=(0, 0)))
    assert first.mask.sum() == 25  # the slice on screen: its own dot anchors the target, the 4 px blob goes
    volume = run(anchors=anchors)
    np.testing.assert_array_equal(volume.mask, probs[:, :, :, :] == 0.9)
    assert (volume.left_out_regions, volume.left_out_px) == (2, 13)
    assert volume.sizes_px[2, 1] == 25
    volume = run(anchors=anchors, keep_connected=False)
    assert (volume.left_out_regions, volume.left_out_px) == (0, 0) and volume.mask.sum() == 25 * 6 + 13


def test_corrected_slices_anchor_the_kept_regions_when_there_is_no_dot(viewer, widget):
    """A loaded model on an image with corrections but no dots: the corrections say where the target is."""
    assert widget._anchors() is None  # no dot, no correction: nothing to keep regions by
    gt = viewer.layers["cine phantom ground truth"]
    target = (np.asarray(gt.data).T == 3).astype(np.uint8)  # (X, Y, Z, T)
    slices = np.zeros(target.shape[2:], dtype=bool)
    slices[2, 1] = True
    widget.supervision.use_corrections(target, slices)
    anchors = widget._anchors()
    assert anchors is not None and anchors.shape == target.shape
    expected = np.zeros(target.shape, dtype=bool)
    expected[:, :, 2, 1] = target[:, :, 2, 1] > 0
    assert expected.any()
    np.testing.assert_array_equal(anchors, expected)


def first_round(viewer, widget, qtbot, gt):
    """Click the dots, set the bounds from the truth, press Train and wait: the trained session."""
    add_dots(viewer, widget, gt)
    set_bounds_from_truth(widget, gt)
    assert widget.train()
    wait_idle(qtbot, widget)
    return widget.session


def test_continue_at_sets_the_learning_rate_of_a_continued_round(viewer, widget, qtbot):
    """Advanced > Continue at: the first round starts at the learning rate, Train again at that times the factor."""
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=2)
    assert widget.settings.resume_lr.value() == 0.5  # TrainConfig.interactive()'s default, shown
    widget.settings.lr.setValue(0.004)
    session = first_round(viewer, widget, qtbot, gt)
    assert session.history[0].lr == pytest.approx(0.004)
    widget.settings.resume_lr.setValue(0.25)
    assert widget.train()  # Train again: the same weights, continued
    wait_idle(qtbot, widget)
    assert widget.session is session and session.config.resume_lr_factor == 0.25
    second = [e for e in session.history if e.kind.value == "step"][2]  # the second round's first step
    assert second.lr == pytest.approx(0.001)


def test_preview_interval_spaces_the_live_previews_of_a_round(viewer, widget, qtbot):
    """Advanced > Preview every N steps, >= S s apart: the floor reaches training and thins the previews."""
    gt = viewer.layers["cine phantom ground truth"]
    configure(widget, steps=6, preview_every=1)
    assert widget.settings.preview_interval.value() == 1.0  # TrainConfig.interactive()'s default, shown
    widget.settings.preview_interval.setValue(0.0)
    session = first_round(viewer, widget, qtbot, gt)
    assert session.config.preview_interval_s == 0.0
    assert sum(e.preview is not None for e in session.history) == 6  # no floor: every step
    first = len(session.history)
    widget.settings.preview_interval.setValue(60.0)
    assert widget.train()  # Train again: 6 more steps, well within a minute
    wait_idle(qtbot, widget)
    assert widget.session is session and session.config.preview_interval_s == 60.0
    second = session.history[first:]
    assert [e.step for e in second if e.preview is not None] == [1]  # the round's first step only
