"""Measure training in the napari widget against the same training without a GUI.

Opens napari on the cine phantom, adds the dock widget, clicks the demo's dots
through the seeds layer (as a user would), sets the demo's bounds, and trains
a fixed number of steps in the widget's thread worker while a 10 ms Qt timer
records how long the event loop goes without running it (a stall is a frozen
window); before that, the widget's loading of torch on its compute thread
(which it starts when it gets an image) is timed the same way. Then trains
the same request with the same settings in a plain
``TrainingSession`` (what ``napari-sizeloss train`` runs) and prints both
throughputs and their ratio.

Run under a virtual X server::

    xvfb-run -a python scripts/gui_bench.py [--steps 100] [--repeats 3] [--json]

``--crop``, ``--batch``, ``--preview-every`` and ``--preview-interval`` set
the Advanced panel as a user would (``--crop 32 --batch 1`` makes steps
several times faster, as a faster machine would).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def run_until(condition, timeout_s: float) -> bool:
    """Run a real Qt event loop (as napari's) until ``condition()`` holds or the timeout.

    The loop sleeps in Qt waiting for events, as an application does; the
    condition is checked every 50 ms.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    end = time.monotonic() + timeout_s

    def check() -> None:
        if condition() or time.monotonic() > end:
            loop.quit()

    poll = QTimer()
    poll.setInterval(50)
    poll.timeout.connect(check)
    poll.start()
    loop.exec()
    poll.stop()
    return bool(condition())


class StallMeter:
    """A 10 ms QTimer; the longest gap between its ticks is the longest stall."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.interval_ms = interval_ms
        self.gaps: list[float] = []
        self.ends: list[float] = []
        self._last = None
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append((now - self._last) * 1000)
            self.ends.append(now)
        self._last = now

    def start(self) -> None:
        """Start measuring now: what the caller does next before returning to the event loop counts."""
        self.gaps.clear()
        self.ends.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def longest(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        """The longest gap that ended in ``(start, end]`` (perf_counter seconds), in ms."""
        inside = [g for g, e in zip(self.gaps, self.ends) if start < e <= end]
        return max(inside) if inside else float("nan")

    def count(self, over_ms: float, start: float = float("-inf"), end: float = float("inf")) -> int:
        """How many gaps longer than ``over_ms`` ended in ``(start, end]``."""
        return sum(1 for g, e in zip(self.gaps, self.ends) if start < e <= end and g > over_ms)

    def stop(self) -> None:
        self.timer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds in each setting (medians are printed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--compile", action="store_true",
                        help="tick the widget's Compile box (the plain rounds compile too); the first press "
                             "then includes the compile, and its stalls are those while compiling")
    parser.add_argument("--compile-here", action="store_true",
                        help="with --compile: compile in napari's process, not first in a child process "
                             "(the widget's way), to compare the two")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="with --compile: let the garbage collections of loading the compiled network scan "
                             "napari's whole heap (as before collect_new_objects_only), to compare")
    parser.add_argument("--shape", type=int, nargs=4, metavar=("X", "Y", "Z", "T"), default=None,
                        help="phantom shape (default: the demo's 192 168 10 20); e.g. 256 256 10 25 for the "
                             "cine size of the targets")
    parser.add_argument("--crop", type=int, default=None, metavar="PX",
                        help="Advanced > Crop (default: the widget's, 96); with --batch 1 and a small crop, steps "
                             "are several times faster, as on a faster machine")
    parser.add_argument("--batch", type=int, default=None, help="Advanced > Batch size (default: the widget's, 8)")
    parser.add_argument("--preview-every", type=int, default=None, metavar="STEPS",
                        help="Advanced > Preview every N steps (default: the widget's, 10); 0: no live previews")
    parser.add_argument("--preview-interval", type=float, default=None, metavar="S",
                        help="Advanced > Preview ... >= S s apart (default: the widget's, 1.0; 0: no floor)")
    args = parser.parse_args(argv)
    os.environ.setdefault("NAPARI_SIZELOSS_DATA_DIR", tempfile.mkdtemp(prefix="napari-sizeloss-bench-"))

    import napari

    # No torch here before the first Train press: a user's napari has not imported it either, and the
    # widget's compute thread importing it (with torch._dynamo, which torch.optim pulls in) is part of
    # what the first press costs.
    from napari_sizeloss.bounds import SizeBounds
    from napari_sizeloss.compute_thread import call
    from napari_sizeloss.demo import make_demo_case
    from napari_sizeloss.weak_labels import dot_centres
    from napari_sizeloss._qt.jobs import build_config

    if "torch" in sys.modules:
        raise SystemExit("error: torch was imported before the first Train press; the first press would look cheaper")

    case = make_demo_case(seed=0, shape=args.shape)
    ph = case.phantom
    viewer = napari.Viewer(show=True, title="napari-sizeloss bench")
    image_layer = viewer.add_image(
        np.transpose(case.image, (3, 2, 1, 0)), name="cine", scale=(1.0, ph.spacing[2], ph.spacing[1], ph.spacing[0])
    )
    run_until(lambda: False, timeout_s=0.5)  # napari draws the image first
    t_open = time.perf_counter()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sizeloss", "Size-constrained segmentation")
    open_ms = (time.perf_counter() - t_open) * 1000  # the widget, its seeds and prediction layers
    widget.go_to_slice(case.clicked_slices[0], case.clicked_frames[0])

    # the demo's dots (discs of radius 1), one click each at the disc's centre,
    # added through the seeds layer in its data coordinates (T, Z, Y, X)
    seeds = widget.seeds_layer
    for code, kind in ((1, "target"), (2, "background")):
        centres = dot_centres(case.seeds, code)
        if len(centres):
            xs, ys, zs, ts = centres.T
            seeds.feature_defaults["kind"] = kind
            seeds.add(np.stack([ts, zs, ys, xs], axis=1))
    seeds.feature_defaults["kind"] = "target"
    unit = widget.bounds_panel.unit
    bounds = case.bounds.to_mm2(ph.spacing[:2]) if unit == "mm2" else case.bounds
    widget.bounds_panel.set_bounds(bounds.lower, bounds.upper)
    widget.settings.ensure_loaded()  # already, by the widget: it started loading torch
    panel = widget.settings
    if args.crop is not None:
        panel.crop.setValue(args.crop)
    if args.batch is not None:
        panel.batch_size.setValue(args.batch)
    if args.preview_every is not None:
        panel.preview_every.setValue(args.preview_every or panel.preview_every.maximum())  # 0: none in a round
    if args.preview_interval is not None:
        panel.preview_interval.setValue(args.preview_interval)
    panel_settings = {
        "crop": int(panel.crop.value()) or None,
        "batch": int(panel.batch_size.value()),
        "preview_every": int(panel.preview_every.value()),
        "preview_interval_s": float(panel.preview_interval.value()),
    }
    meter = StallMeter()

    # The widget loads torch on its compute thread once it has an image, while a user places dots:
    # the longest stall of the event loop meanwhile, and how long it takes.
    meter.start()
    t_load = time.perf_counter()
    run_until(lambda: widget.settings.devices_known, timeout_s=120)
    torch_load_s = time.perf_counter() - t_load
    meter.stop()
    torch_load_stall_ms = meter.longest()
    torch_load_stalls = meter.count(100.0)
    if args.compile:
        if not widget.settings.compile.isEnabled():
            raise SystemExit(f"error: {widget.settings.compile.toolTip()}")
        widget.settings.compile.setChecked(True)
        if args.compile_here:
            overrides = widget.settings.overrides
            widget.settings.overrides = lambda: {**overrides(), "compile_ahead": False}
        if args.no_gc_freeze:
            import contextlib

            import napari_sizeloss.compiled as compiled

            compiled.collect_new_objects_only = contextlib.nullcontext  # collections scan the whole heap

    on_progress = widget._on_progress
    marks: dict[str, float] = {}

    def timed_progress(event) -> None:
        kind = getattr(event.kind, "value", event.kind)
        marks.setdefault("first_step", time.perf_counter())
        marks["previews"] = marks.get("previews", 0) + (getattr(event, "preview", None) is not None)
        if kind == "done":
            marks["done"] = time.perf_counter()
        on_progress(event)

    widget._on_progress = timed_progress  # the worker callbacks look it up on the instance
    on_item = widget._on_worker_item

    def timed_item(item) -> None:
        if type(item).__name__ == "SessionReady":
            marks.setdefault("ready", time.perf_counter())  # the worker runs; napari made its layer before
        on_item(item)

    widget._on_worker_item = timed_item  # connected to the worker's signals when a job starts

    def train_round(steps: int) -> tuple[float, float, float, float]:
        """Images/s of the round, the longest stall while steps ran, the longest at its start or end,
        and the live previews per second of steps."""
        widget.settings.steps.setValue(steps)
        widget.session = None  # each round starts afresh, as the plain run below
        marks.clear()
        meter.start()
        marks["press"] = time.perf_counter()
        if not widget.train():
            raise SystemExit(f"error: training did not start: {widget.status.text()}")
        run_until(lambda: widget.worker is None, timeout_s=1800)
        run_until(lambda: False, timeout_s=0.3)  # let the final repaint happen
        meter.stop()
        first, done = marks.get("first_step", float("inf")), marks.get("done", float("inf"))
        during = meter.longest(first, done)
        previews_per_s = marks.get("previews", 0) / (done - first) if done > first else float("nan")
        edges = max(meter.longest(end=first), meter.longest(start=done))
        return widget._last_round.get("images_per_s", 0.0), during, edges, previews_per_s

    def plain_round(steps: int) -> float:
        """Images/s of the same request trained by a plain session, as ``napari-sizeloss train``.

        It runs on the compute thread the widget uses (one torch thread team,
        as in the CLI's single thread); the viewer stays open but its event
        loop waits meanwhile, so nothing is drawn.
        """
        from napari_sizeloss.trainer import TrainingSession

        request = widget._snapshot_request()
        config = build_config({**request.config, "steps": steps})
        # made on the compute thread too, as the widget's job makes it: torch work on a second thread
        # gives that thread an OpenMP team of its own and slows every later step (napari_sizeloss.compute_thread)
        session = call(lambda: TrainingSession(
            request.image, request.seeds, SizeBounds(request.lower, request.upper, unit=request.unit),
            spacing=request.spacing, absent=request.absent, config=config,
        ))
        events = call(lambda: list(session.run()))
        return events[-1].images_per_s

    # the first press (the compute thread's first job; with Compile, the compile): timed apart
    run_until(lambda: False, timeout_s=1.0)  # napari draws the dots and layers, as while a user clicks
    _, _, first_press_stall, _ = train_round(2)
    first_press_to_step = marks.get("first_step", float("nan")) - marks["press"]
    first_press_stalls = meter.count(100.0, end=marks.get("first_step", float("inf")))
    # from the worker's start to the first step: with Compile, the child's compile and the load
    ready, first = marks.get("ready", float("inf")), marks.get("first_step", float("inf"))
    compile_stall, compile_stalls = meter.longest(ready, first), meter.count(100.0, ready, first)
    # GUI and plain rounds alternate, so drift in the machine's speed hits both alike
    gui_rates, cli_rates, stalls, edge_stalls, previews = [], [], [], [], []
    for _ in range(args.repeats):
        rate, stall, edge, preview_rate = train_round(args.steps)
        previews.append(preview_rate)
        gui_rates.append(rate)
        stalls.append(stall)
        edge_stalls.append(edge)
        cli_rates.append(plain_round(args.steps))
    viewer.close()

    gui, cli = statistics.median(gui_rates), statistics.median(cli_rates)
    result = {
        "shape": list(case.image.shape),
        "steps": args.steps,
        "repeats": args.repeats,
        "torch_threads": call(lambda: sys.modules["torch"].get_num_threads()),
        **panel_settings,
        "previews_per_s": round(statistics.median(previews), 2),
        "gui_images_per_s": round(gui, 1),
        "cli_images_per_s": round(cli, 1),
        "gui_over_cli": round(gui / cli, 3),
        "max_event_loop_stall_ms": round(statistics.median(stalls), 1),
        "max_event_loop_stall_ms_worst": round(max(stalls), 1),
        "round_start_end_stall_ms": round(statistics.median(edge_stalls), 1),
        "widget_open_ms": round(open_ms, 1),
        "torch_load_s": round(torch_load_s, 2),
        "torch_load_stall_ms": round(torch_load_stall_ms, 1),
        "torch_load_stalls_over_100ms": torch_load_stalls,
        "first_train_press_stall_ms": round(first_press_stall, 1),
        "first_train_press_to_first_step_s": round(first_press_to_step, 2),
        "first_train_press_stalls_over_100ms": first_press_stalls,
        "worker_start_to_first_step_stall_ms": round(compile_stall, 1),
        "worker_start_to_first_step_stalls_over_100ms": compile_stalls,
        "compile": bool(args.compile),
        "compile_ahead": bool(args.compile and not args.compile_here),
        "gc_freeze_while_loading": bool(args.compile and not args.no_gc_freeze),
    }
    print(f"training in the widget's worker: {gui:.1f} images/s (median of {args.repeats} rounds of {args.steps} steps)")
    print(f"same training without a GUI:     {cli:.1f} images/s")
    print(f"GUI / no GUI: {gui / cli:.2f}")
    print(f"live previews: {result['previews_per_s']} a second (every {result['preview_every']} steps, "
          f">= {result['preview_interval_s']} s apart; crop {result['crop']}, batch {result['batch']})")
    print(f"longest event-loop stall while steps run: {result['max_event_loop_stall_ms']} ms (median over rounds; worst {result['max_event_loop_stall_ms_worst']} ms)")
    print(f"longest stall at the start or end of a round (snapshot, whole-volume update): {result['round_start_end_stall_ms']} ms (median)")
    print(f"opening the widget on the image (the widget, its seeds and prediction layers): {open_ms:.0f} ms")
    print(f"then torch loads on the compute thread: {torch_load_s:.1f} s, longest stall {torch_load_stall_ms:.0f} ms, "
          f"{torch_load_stalls} over 100 ms")
    what = " (compiles the network)" if args.compile else ""
    print(f"first Train press{what}: longest stall {first_press_stall:.0f} ms, "
          f"{first_press_to_step:.1f} s to the first step, {first_press_stalls} stalls over 100 ms until then")
    print(f"  of which after the worker started (compiling and loading, with Compile): longest stall "
          f"{compile_stall:.0f} ms, {compile_stalls} over 100 ms")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
