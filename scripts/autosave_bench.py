"""What an autosave costs the GUI thread: written there and waited for, or handed to the background writer.

Opens napari on the demo phantom (192x168, 10 slices, 20 frames) with the
dock widget, places the demo's dots, marks ``--corrected`` slice-frames as
corrected with the phantom's true masks (a user's corrections), then, on the
GUI thread, times

* ``autosave_now()``: the snapshot and the write, waited for (what every
  autosave cost the window before the background writer; still what closing
  the widget does, so nothing is lost);
* ``autosave_in_background()``: the snapshot only, handed to
  :class:`~napari_sizeloss._qt.autosave.AutosaveWriter` (the autosave
  timer's action), and separately how long until the file is on disk.

Each call follows a new dot, so every save writes different work. A slow or
network disk is emulated with ``--fsync-delay-ms`` (a sleep added to each
file sync). Autosaves go to a temporary folder.

Run under a virtual X server::

    xvfb-run -a python scripts/autosave_bench.py [--repeats 15] [--corrected 8] [--fsync-delay-ms 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="autosaves of each kind")
    parser.add_argument("--corrected", type=int, default=8, help="slice-frames marked corrected")
    parser.add_argument("--fsync-delay-ms", type=float, default=0.0, help="added to each file sync (a slow disk)")
    args = parser.parse_args(argv)
    os.environ["NAPARI_SIZELOSS_DATA_DIR"] = tempfile.mkdtemp(prefix="napari-sizeloss-bench-")

    import napari

    from napari_sizeloss import _atomic
    from napari_sizeloss.demo import make_demo_case

    if args.fsync_delay_ms > 0:
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            time.sleep(args.fsync_delay_ms / 1000)
            real_fsync(fd)

        _atomic.os.fsync = slow_fsync  # the os module itself: every sync of this process

    case = make_demo_case(seed=0)
    viewer = napari.Viewer(show=True, title="napari-sizeloss autosave bench")
    viewer.add_image(np.transpose(case.image, (3, 2, 1, 0)), name="cine")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sizeloss", "Size-constrained segmentation")
    X, Y, Z, T = case.image.shape
    dots = np.argwhere(case.seeds > 0)  # (x, y, z, t)
    widget.seeds_layer.data = dots[:, [3, 2, 1, 0]].astype(float)  # layer order (t, z, y, x)
    sup = widget.supervision
    present = np.argwhere(case.target.any(axis=(0, 1)))
    for z, t in present[np.linspace(0, len(present) - 1, args.corrected).astype(int)]:
        sup.corrected[z, t] = True
        sup.corrections[:, :, z, t] = case.target[:, :, z, t]
    widget._autosave_timer.stop()
    rng = np.random.default_rng(0)

    def new_dot() -> None:
        point = [rng.integers(T), rng.integers(Z), rng.integers(Y), rng.integers(X)]
        widget.seeds_layer.data = np.vstack([widget.seeds_layer.data, point])
        widget._autosave_timer.stop()

    def timed(save) -> tuple[float, float]:
        new_dot()
        start = time.perf_counter()
        result = save()
        gui_ms = (time.perf_counter() - start) * 1000
        if result is not None and hasattr(result, "result"):  # a future: wait for the disk, off the clock
            result.result()
        return gui_ms, (time.perf_counter() - start) * 1000

    widget.autosave_now()  # warm-up (folders, imports)
    waited = [timed(widget.autosave_now) for _ in range(args.repeats)]
    background = [timed(widget.autosave_in_background) for _ in range(args.repeats)]
    path = widget.autosave_path()
    print(f"demo phantom {X}x{Y}x{Z}x{T}, {len(widget.seeds_layer.data)} dots, {args.corrected} corrected "
          f"slice-frames, file {path.stat().st_size / 1024:.0f} KiB, fsync delay {args.fsync_delay_ms:g} ms, "
          f"medians of {args.repeats}")
    print(f"  written on the GUI thread (autosave_now):      GUI thread "
          f"{statistics.median(g for g, _ in waited):6.1f} ms (max {max(g for g, _ in waited):.1f})")
    print(f"  background writer (autosave_in_background):    GUI thread "
          f"{statistics.median(g for g, _ in background):6.1f} ms (max {max(g for g, _ in background):.1f}); "
          f"on disk after {statistics.median(d for _, d in background):.1f} ms")
    widget.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
