"""How long the widget's own calls hold napari's GUI thread on a large volume.

Opens napari with a random cine of ``--shape`` (default 256x256x10x25, the
issue's volume), opens the widget, and times, on the GUI thread, the calls a
user's actions make besides training itself: writing a whole-volume
prediction into the labels layer (the end of every round; the first time and
again), checking which slices were edited, Use corrections (without the
training round it then starts), refreshing the size table, the snapshot of
dots, tags and corrections that a Train press takes, the autosave and
Export masks (a first and a second time), and Predict with a loaded model
(the time to the first slice shown, to the whole volume, and the longest
gap between event-loop passes meanwhile). Each is the median over ``--repeats`` fresh processes, since a
first call pays for memory a later one reuses.

Run under a virtual X server::

    xvfb-run -a python scripts/gui_calls_bench.py [--shape 256 256 10 25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _one_process(shape: tuple[int, int, int, int]) -> dict[str, float]:
    """Time each call once in this process (a fresh napari)."""
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_sizeloss._qt.jobs import VolumePrediction

    os.environ.setdefault("NAPARI_SIZELOSS_DATA_DIR", tempfile.mkdtemp(prefix="napari-sizeloss-bench-"))
    X, Y, Z, T = shape
    viewer = napari.Viewer(show=True)
    image = np.random.default_rng(0).random((T, Z, Y, X), dtype=np.float32)
    viewer.add_image(image, name="cine", scale=(1.0, 8.0, 1.5, 1.5))
    _, widget = viewer.window.add_plugin_dock_widget("napari-sizeloss", "Size-constrained segmentation")
    app = QApplication.instance()

    def idle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    times: dict[str, float] = {}

    def timed(name: str, call) -> None:
        start = time.perf_counter()
        call()
        times[name] = (time.perf_counter() - start) * 1000
        idle(0.3)

    idle(1.0)
    mask = np.zeros((X, Y, Z, T), dtype=np.uint8)
    mask[X // 3 : X // 2, Y // 3 : Y // 2] = 1
    # built as the training job builds it, in its worker thread (not timed here)
    prediction = VolumePrediction(mask=mask, sizes_px=mask.sum(axis=(0, 1)).astype(float))
    timed("write_prediction_first_ms", lambda: widget._apply_volume(prediction))
    timed("write_prediction_again_ms", lambda: widget._apply_volume(prediction))
    widget.tracker.layer.data[T - 1, Z // 2, :20, :20] = 1  # the user paints on one slice
    timed("edited_slices_ms", widget.edited_slices)
    widget.train = lambda: True  # Use corrections without the round it starts
    timed("use_corrections_ms", widget.use_corrections)
    timed("refresh_views_ms", widget._refresh_views)
    widget.seeds_layer.add([[0, 2, Y // 2, X // 2], [T - 1, 3, Y // 2, X // 2]])  # two target dots
    timed("train_snapshot_ms", widget._snapshot_request)  # what a Train press copies before its worker starts
    timed("autosave_ms", widget.autosave_now)
    folder = tempfile.mkdtemp(prefix="napari-sizeloss-bench-")
    for key, name in (("export_masks_ms", "mask.nii.gz"), ("export_again_ms", "mask_again.nii.gz")):
        out = os.path.join(folder, name)
        timed(key, lambda: widget.export_masks(out))
        if not os.path.exists(out):
            raise RuntimeError(f"export wrote nothing: {widget.status.text()}")
    # Predict with a loaded model (every pixel: another grid than any training): the slice on screen
    # first, then the volume. Timed from the press; the longest gap between event-loop passes meanwhile.
    from napari_sizeloss.checkpoint import save_checkpoint
    from napari_sizeloss.compute_thread import call
    from napari_sizeloss.network import ENet

    model_path = os.path.join(folder, "model.ckpt")
    call(lambda: save_checkpoint(model_path, ENet(in_channels=1, num_classes=2)))  # torch on the compute thread only
    widget.load_model(model_path)
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.005)
    marks: dict[str, float] = {}
    shown = getattr(widget, "_on_prediction_progress", None)
    if shown is not None:
        def first_slice(item) -> None:
            shown(item)
            if item.mask is not None:
                marks["first_slice"] = time.perf_counter()
        widget._on_prediction_progress = first_slice
    start = last = time.perf_counter()
    longest = 0.0
    widget.predict()
    while widget.worker is not None:
        app.processEvents()
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        time.sleep(0.002)
    times["predict_first_slice_ms"] = (marks.get("first_slice", float("nan")) - start) * 1000
    times["predict_whole_volume_ms"] = (time.perf_counter() - start) * 1000
    times["predict_longest_gap_ms"] = longest * 1000
    viewer.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, metavar=("X", "Y", "Z", "T"), default=(256, 256, 10, 25))
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes (medians are printed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    if args.child:
        print(json.dumps(_one_process(shape)))
        return 0
    runs = []
    for _ in range(args.repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--shape", *map(str, shape)],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            print(f"error: a timing process failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {"shape": list(shape), "repeats": args.repeats}
    print(f"GUI-thread time of the widget's calls on a {'x'.join(map(str, shape))} volume "
          f"(median of {args.repeats} fresh processes):")
    for key in runs[0]:
        values = [run[key] for run in runs]
        result[key] = round(statistics.median(values), 1)
        print(f"  {key[:-3].replace('_', ' '):28s} {result[key]:7.1f} ms   ({', '.join(f'{v:.0f}' for v in values)})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
