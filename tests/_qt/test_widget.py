"""The dock widget without training: opening, dots, bounds, tags, messages, autosave."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import add_layers, open_widget
from widget_helpers import click, lv_centre, show_slice

from napari_sizeloss._qt.size_table import NONE


def test_widget_opens_through_the_manifest_on_the_phantom(viewer, widget):
    image = viewer.layers["cine phantom"]
    assert widget.image_combo.currentText() == "cine phantom"
    assert widget.geometry.shape == (64, 56, 4, 3)
    seeds = viewer.layers["cine phantom seeds"]
    assert seeds.data.shape == (0, 4)
    np.testing.assert_allclose(seeds.scale, image.scale)
    assert viewer.layers.selection.active is seeds and seeds.mode == "add"
    assert widget.bounds_panel.unit == "mm2"  # the phantom has a known spacing
    assert widget.size_table.table.rowCount() == 4 and widget.size_table.table.columnCount() == 3
    # the (empty) prediction layer is made with the seeds, so that Train does not stall building it
    prediction = viewer.layers["cine phantom prediction"]
    assert prediction.data.shape == image.data.shape and not np.asarray(prediction.data).any()
    np.testing.assert_allclose(prediction.scale, image.scale)
    names = [layer.name for layer in viewer.layers]
    assert names.index("cine phantom prediction") < names.index("cine phantom seeds")  # dots drawn on top
    assert widget.tracker is not None and widget.tracker.layer is prediction and not widget.tracker.has_prediction


def test_an_image_starts_loading_torch_on_the_compute_thread(widget, qtbot):
    """While the user places dots, not at the first Train press (seconds later to the first step)."""
    assert widget.settings.loaded  # the defaults are in the panel
    qtbot.waitUntil(lambda: widget.settings.devices_known, timeout=60_000)  # the compute thread's answer
    names = [widget.settings.device.itemText(i) for i in range(widget.settings.device.count())]
    assert names[0] == "auto" and "cpu" in names


def test_one_click_one_dot_target_then_background(viewer, widget, qtbot):
    seeds = widget.seeds_layer
    gt = viewer.layers["cine phantom ground truth"]
    show_slice(viewer, viewer.layers["cine phantom"], z=1, t=0)
    y, x = lv_centre(gt, z=1, t=0)
    click(viewer, seeds, y, x)
    assert len(seeds.data) == 1
    np.testing.assert_allclose(seeds.data[0], (0, 1, y, x))

    widget.seeds_panel.background_button.click()  # the toggle
    click(viewer, seeds, 3, 3)
    assert list(seeds.features["kind"]) == ["target", "background"]
    assert not np.allclose(seeds.face_color[0], seeds.face_color[1])

    seeds_array = widget.seeds_array()  # what the trainer gets: (X, Y, Z, T) uint8
    assert seeds_array.shape == (64, 56, 4, 3) and seeds_array.dtype == np.uint8
    assert seeds_array[x, y, 1, 0] == 1 and seeds_array[3, 3, 1, 0] == 2
    qtbot.waitUntil(lambda: "1 target dot(s) on 1 slice(s), 1 background" in widget.seeds_panel.summary.text(), timeout=3000)


def test_key_b_and_t_switch_the_dot_kind(viewer, widget):
    from napari.utils.key_bindings import KeymapHandler

    seeds = widget.seeds_layer
    keys = KeymapHandler()  # resolves a key as the canvas does: active layer first, then the viewer
    keys.keymap_providers = [seeds, viewer]
    keys.press_key("B")
    assert widget.seeds_panel.kind == "background"
    assert seeds.feature_defaults["kind"][0] == "background"
    keys.press_key("T")
    assert widget.seeds_panel.kind == "target"


def test_sliders_and_spin_boxes_agree_and_lower_above_upper_is_reported(viewer, widget, qtbot):
    panel = widget.bounds_panel
    panel.upper_slider.setValue(400)
    lower, upper = panel.bounds()
    assert upper == pytest.approx(widget.geometry.slice_area * 0.4**2, rel=1e-3)
    assert panel.upper_spin.value() == pytest.approx(upper, abs=0.1)
    panel.lower_spin.setValue(upper + 100)  # typed: lower above upper
    assert panel.lower_slider.value() == panel.lower_row.position_of(upper + 100)
    assert panel.warning.isVisibleTo(widget) and "above the upper bound" in panel.warning.text()
    # Train refuses with the same message
    seeds = widget.seeds_layer
    click(viewer, seeds, *lv_centre(viewer.layers["cine phantom ground truth"], 1, 1))
    assert widget.train() is False
    assert "above the upper bound" in widget.status.text()
    assert widget.worker is None and widget.train_button.isEnabled()


def test_train_without_dots_says_so(widget):
    assert widget.train() is False
    assert "no target dots" in widget.status.text()
    assert widget.train_button.isEnabled()


def test_2d_image_and_no_image_give_clear_messages(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    assert widget.train() is False
    assert "choose an image layer" in widget.status.text()
    viewer.add_image(np.zeros((64, 64), np.float32), name="plane")
    assert "2D" in widget.image_info.text()
    assert widget.train() is False
    assert "2D" in widget.status.text()


def test_seeds_labels_layer_of_wrong_shape_is_refused(viewer, widget):
    viewer.add_labels(np.ones((3, 4, 30, 30), np.uint8), name="old seeds")
    widget.seeds_panel.layer_combo.setCurrentText("old seeds")
    assert widget.seeds_layer.name == "old seeds"
    assert widget.train() is False
    assert "old seeds" in widget.status.text() and "shape" in widget.status.text()


def test_tags_current_slice_and_range(viewer, widget, qtbot):
    image = viewer.layers["cine phantom"]
    show_slice(viewer, image, z=3, t=2)
    widget.tags_panel.all_frames.setChecked(False)
    widget.tags_panel.mark_button.click()
    absent = widget.supervision.absent
    assert absent[3, 2] and absent.sum() == 1
    widget.tags_panel.all_frames.setChecked(True)
    widget.tags_panel.range_first.setValue(0)
    widget.tags_panel.range_last.setValue(0)
    widget.tags_panel.range_button.click()
    assert absent[0].all() and absent.sum() == 4
    # a slice with target dots cannot be tagged absent
    show_slice(viewer, image, z=1, t=0)
    click(viewer, widget.seeds_layer, *lv_centre(viewer.layers["cine phantom ground truth"], 1, 0))
    widget.tags_panel.mark_button.click()
    assert not absent[1, 0] and absent[1, 1] and "target dots" in widget.status.text()
    widget.tags_panel.clear_button.click()
    assert not absent.any()


def test_cells_selected_in_the_size_table_are_tagged_and_untagged(viewer, widget):
    from qtpy.QtWidgets import QTableWidgetSelectionRange

    image = viewer.layers["cine phantom"]
    show_slice(viewer, image, z=1, t=0)
    click(viewer, widget.seeds_layer, *lv_centre(viewer.layers["cine phantom ground truth"], 1, 0))
    table = widget.size_table.table
    Z, T = widget.supervision.absent.shape
    # a block: slices 0-1 of frames 0-1 (slice 1 of frame 0 holds a target dot), and one more cell by ctrl-click
    table.setRangeSelected(QTableWidgetSelectionRange(0, 0, 1, 1), True)
    table.setRangeSelected(QTableWidgetSelectionRange(Z - 1, T - 1, Z - 1, T - 1), True)
    widget.size_table.mark_button.click()
    expected = np.zeros((Z, T), bool)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[Z - 1, T - 1] = True
    np.testing.assert_array_equal(widget.supervision.absent, expected)
    assert "target dots" in widget.status.text() and "z=1 t=0" in widget.status.text()
    assert "∅" in table.item(0, 1).text() and "∅" not in table.item(1, 0).text()
    np.testing.assert_array_equal(widget._snapshot_request().absent, expected)  # what the next Train round gets
    table.clearSelection()
    table.setRangeSelected(QTableWidgetSelectionRange(0, 0, 0, T - 1), True)  # row 0, every frame
    widget.size_table.unmark_button.click()
    expected[0] = False
    np.testing.assert_array_equal(widget.supervision.absent, expected)
    table.clearSelection()
    widget.size_table.mark_button.click()  # nothing selected: nothing changes
    np.testing.assert_array_equal(widget.supervision.absent, expected)
    widget.tag_cells(np.ones((Z + 1, T), bool))  # cells of another shape: one line, nothing changes
    assert "differ in shape" in widget.status.text()
    np.testing.assert_array_equal(widget.supervision.absent, expected)


def test_table_click_moves_the_viewer(viewer, widget):
    widget.size_table.table.cellClicked.emit(2, 1)
    assert widget.current_slice() == (2, 1)
    widget._refresh_views()
    assert (widget.size_table.states == NONE).all()  # no prediction yet


def test_estimate_bounds_from_the_ground_truth_layer(viewer, widget):
    gt = viewer.layers["cine phantom ground truth"]
    assert widget.bounds_panel.labels_combo.currentText() == gt.name
    assert widget.bounds_panel.label_value.value() == 3  # the phantom's LV cavity
    widget.bounds_panel.estimate_button.click()
    lower, upper = widget.bounds_panel.bounds()
    areas = (np.asarray(gt.data) == 3).sum(axis=(-2, -1)) * widget.geometry.pixel_area_mm2  # (T, Z) mm^2
    nonzero = areas[areas > 0]
    assert lower == pytest.approx(1.1 * nonzero.min(), rel=1e-3)
    assert upper == pytest.approx(0.9 * nonzero.max(), rel=1e-3)


def test_work_is_autosaved_and_offered_back(make_napari_viewer, small_phantom, qtbot, data_dir):
    viewer = make_napari_viewer()
    image, gt = add_layers(viewer, small_phantom)
    widget = open_widget(viewer)
    show_slice(viewer, image, z=2, t=1)
    y, x = lv_centre(gt, z=2, t=1)
    click(viewer, widget.seeds_layer, y, x)
    widget.tags_panel.range_first.setValue(3)
    widget.tags_panel.range_last.setValue(3)
    widget.tags_panel.range_button.click()
    path = widget.autosave_now()
    assert path is not None and path.parent == data_dir / "autosave"

    # the same image opened again in a new viewer: the work is offered back
    viewer2 = make_napari_viewer()
    add_layers(viewer2, small_phantom)
    widget2 = open_widget(viewer2)
    assert widget2.restore_box.isVisibleTo(widget2)
    assert "1 target dot(s)" in widget2.restore_text.text()
    widget2.restore_button.click()
    np.testing.assert_allclose(widget2.seeds_layer.data, [[1, 2, y, x]])
    assert widget2.supervision.absent[3].all() and widget2.supervision.absent.sum() == 3

    # another image (other pixels) is not offered this work
    viewer3 = make_napari_viewer()
    data, kwargs, _ = small_phantom[0]
    viewer3.add_image(data[::-1].copy(), **kwargs)
    widget3 = open_widget(viewer3)
    assert not widget3.restore_box.isVisibleTo(widget3)


def _blocked_disk(monkeypatch):
    """Makes every autosave write wait until ``release`` is set (a slow or network disk)."""
    import threading

    from napari_sizeloss._qt import autosave

    real_save = autosave.save_work
    started, release = threading.Event(), threading.Event()

    def save(path, work):
        started.set()
        assert release.wait(20), "the test never released the write"
        return real_save(path, work)

    monkeypatch.setattr(autosave, "save_work", save)
    return started, release


def test_the_autosave_never_holds_up_the_window_and_closing_waits_for_it(
    viewer, widget, small_phantom, qtbot, monkeypatch
):
    import threading
    import time

    from napari_sizeloss._qt import autosave

    started, release = _blocked_disk(monkeypatch)
    show_slice(viewer, viewer.layers["cine phantom"], z=2, t=1)
    y, x = lv_centre(viewer.layers[small_phantom[1][1]["name"]], z=2, t=1)
    click(viewer, widget.seeds_layer, y, x)
    # the timer's save starts while the event loop keeps running (on the GUI thread it would hang here)
    qtbot.waitUntil(started.is_set, timeout=5000)
    t0 = time.perf_counter()
    qtbot.wait(100)
    assert time.perf_counter() - t0 < 2.0 and widget._autosave_writer.busy
    path = widget.autosave_path()
    assert autosave.load_work(path) is None  # nothing on disk yet

    # closing waits for the write in progress (and the newer dot queued behind it)
    click(viewer, widget.seeds_layer, y + 2, x)
    threading.Timer(0.3, release.set).start()
    widget.shutdown()
    assert not widget._autosave_writer.busy
    saved = autosave.load_work(path)
    np.testing.assert_allclose(saved.points, [[1, 2, y, x], [1, 2, y + 2, x]])


def test_a_failed_background_autosave_is_reported_in_the_status_line(viewer, widget, small_phantom, qtbot, monkeypatch):
    import threading

    from napari_sizeloss._qt import autosave

    def save(path, work):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(autosave, "save_work", save)
    threads = []
    message = widget._message
    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        message(*args, **kwargs)

    monkeypatch.setattr(widget, "_message", recording)
    show_slice(viewer, viewer.layers["cine phantom"], z=2, t=1)
    y, x = lv_centre(viewer.layers[small_phantom[1][1]["name"]], z=2, t=1)
    click(viewer, widget.seeds_layer, y, x)
    qtbot.waitUntil(lambda: "autosave failed" in widget.status.text(), timeout=5000)
    assert threads and all(t is threading.main_thread() for t in threads)  # widgets are touched on the GUI thread only
    assert "Permission denied" in widget.status.text() and "still in the seeds layer" in widget.status.text()
    assert len(widget.seeds_layer.data) == 1  # the dot itself is kept


def test_export_before_any_prediction_is_refused(widget, tmp_path):
    assert widget.export_masks(str(tmp_path / "mask.nii.gz")) is None
    assert "nothing to export" in widget.status.text()
    assert not (tmp_path / "mask.nii.gz").exists()


def test_a_round_builds_its_session_with_collections_confined_to_new_objects(monkeypatch):
    """The first round imports torch and builds a network inside napari: a full collection of napari's
    whole heap then would freeze the window ~300 ms, so the collector sees only the new objects."""
    import gc

    from napari_sizeloss._qt.jobs import SessionReady, TrainRequest, training_job
    from napari_sizeloss.trainer import TrainingSession

    frozen_while_built = []
    build = TrainingSession.__init__

    def recording(self, *args, **kwargs):
        frozen_while_built.append(gc.get_freeze_count())
        build(self, *args, **kwargs)

    monkeypatch.setattr(TrainingSession, "__init__", recording)
    image = np.random.default_rng(0).random((32, 32, 2, 1)).astype(np.float32)
    seeds = np.zeros(image.shape, np.uint8)
    seeds[16, 16, 0, 0] = 1
    corrected = np.zeros((2, 1), bool)
    request = TrainRequest(
        image=image, seeds=seeds, lower=10, upper=200, unit="px", spacing=None, absent=corrected.copy(),
        corrected=corrected, corrections=np.zeros((32, 32, 0), np.uint8), config={"steps": 1},
    )
    job = training_job(request)
    assert isinstance(next(job), SessionReady)
    job.close()
    assert frozen_while_built and frozen_while_built[0] > 0  # everything older was out of the collector's scans
    assert gc.get_freeze_count() == 0  # and handed back afterwards: nothing stays out of reach


def test_unfolding_advanced_settings_does_not_import_torch_on_the_gui_thread():
    """It used to: a 2.7-3.5 s freeze. The defaults are torch-free; the devices come from the compute thread.

    The probe is queued from the event loop (the panel's timer), not at once: napari's first drawing of
    a new image goes first.
    """
    code = """
import sys
from qtpy.QtWidgets import QApplication
app = QApplication([])
import napari_sizeloss.compute_thread as ct
queued = []
ct.submit = lambda fn, *a, **k: queued.append(fn) or _Pending()
class _Pending:
    def done(self): return False
from napari_sizeloss._qt.settings import AdvancedSettings
panel = AdvancedSettings()
panel.ensure_loaded()
at_once = [f.__name__ for f in queued]
from qtpy.QtTest import QTest
QTest.qWait(400)
print('torch' in sys.modules, panel.steps.value(), panel.batch_size.value(), panel.crop.value(),
      [panel.device.itemText(i) for i in range(panel.device.count())], at_once, [f.__name__ for f in queued],
      panel.overrides()['device'], panel.devices_known)
"""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}  # plain Qt widgets: no OpenGL needed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    from napari_sizeloss.config import TrainConfig

    cfg = TrainConfig.interactive()
    assert out.stdout.split(None, 4)[:4] == ["False", str(cfg.steps), str(cfg.batch_size), str(cfg.crop)]
    assert "['auto', 'cpu'] [] ['probe_devices'] auto False" in out.stdout


def test_widget_module_does_not_import_torch():
    code = "import sys, napari_sizeloss._widget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loss_plot_paints_curves_fast_and_keeps_spikes(qtbot):
    """The live loss plot (QPainter, GUI thread) paints log-scale curves, round marks, and keeps spikes."""

    from napari_sizeloss._qt.loss_plot import LossPlot, decimate, y_limits

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 160)
    plot.show()
    rng = np.random.default_rng(0)
    for i in range(3000):
        plot.append(float(np.exp(-i / 500) + 0.01 * rng.random()), 0.0 if i % 7 else 1e-3)
    plot.start_round()
    assert plot.round_starts == [3000]
    image = plot.grab().toImage()  # runs paintEvent
    assert plot.paint_count >= 1
    colours = {image.pixelColor(x, y).name() for x in range(0, image.width(), 2) for y in range(0, image.height(), 2)}
    assert "#ff9f1c" in colours and "#2ec4b6" in colours  # both curves (and their legend) are drawn
    # zeros of the size term sit at the floor, the axis spans both curves
    low, top = y_limits(plot.ce, plot.size)
    assert low <= 1e-3 and top >= max(plot.ce)
    # decimation keeps a single spike
    y = np.ones(5000)
    y[1234] = 50.0
    xs, ys = decimate(np.arange(5000.0), y, max_points=100)
    assert len(xs) <= 102 and ys.max() == 50.0 and 1234.0 in xs


def test_a_red_cell_says_which_bound_it_crosses(widget):
    table = widget.size_table
    present = np.array([[True, False], [False, False]])
    absent = np.array([[False, False], [False, True]])
    none = np.zeros((2, 2), bool)
    sizes = np.array([[50.0, 500.0], [0.0, 30.0]])
    lower = np.array([[100.0, 0.0], [0.0, 0.0]])
    upper = np.array([[400.0, 400.0], [400.0, 0.0]])
    table.show_sizes(sizes, lower, upper, present, absent, none, "px")
    tips = [[table.table.item(z, t).toolTip() for t in range(2)] for z in range(2)]
    assert tips[0][0].startswith("z=0, t=0: 50 px; bounds [100, 400] px; smaller than the lower bound")
    assert "raise the upper bound" in tips[0][1]
    assert tips[1][0].endswith("inside the bounds")
    assert "tagged absent" in tips[1][1]


def test_the_device_probe_starts_the_training_operator(monkeypatch):
    """The probe runs as an image arrives: the C++ operator's build overlaps the user's clicks, not Train."""
    from napari_sizeloss import native_op
    from napari_sizeloss._qt import jobs

    calls = []
    monkeypatch.setattr(native_op, "start", lambda: calls.append("start"))
    devices, _ = jobs.probe_devices()
    assert "cpu" in devices
    assert calls == ["start"]
