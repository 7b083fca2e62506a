"""What one repaint of the widget costs the event loop, with nothing training.

Opens napari on the demo phantom with the dock widget (as ``gui_bench.py``),
waits for torch to load, then every 300 ms changes one thing on screen and
measures, with a 5 ms Qt timer, the longest gaps in the event loop: the
status line's text, the loss plot, and a live preview written into the
prediction layer (the slice on screen). Under Xvfb's software OpenGL each
repaint recomposites napari's whole window, which is what the stalls of
``gui_bench.py`` are made of; a preview also redraws the canvas.

Run under a virtual X server::

    xvfb-run -a python scripts/repaint_bench.py [--repeats 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gui_bench import StallMeter, run_until  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12, help="changes of each kind (one every 300 ms)")
    args = parser.parse_args(argv)
    os.environ.setdefault("NAPARI_SIZELOSS_DATA_DIR", tempfile.mkdtemp(prefix="napari-sizeloss-bench-"))

    import napari
    from qtpy.QtCore import QTimer

    from napari_sizeloss.demo import make_demo_case

    case = make_demo_case(seed=0)
    viewer = napari.Viewer(show=True, title="napari-sizeloss repaint bench")
    viewer.add_image(np.transpose(case.image, (3, 2, 1, 0)), name="cine")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sizeloss", "Size-constrained segmentation")
    run_until(lambda: widget.settings.devices_known, timeout_s=120)
    z, t = case.clicked_slices[0], case.clicked_frames[0]
    widget.go_to_slice(z, t)
    run_until(lambda: False, timeout_s=1.0)
    meter = StallMeter(5)

    def measure(label: str, change) -> None:
        done = {"n": 0}
        call_ms: list[float] = []

        def tick() -> None:
            done["n"] += 1
            start = time.perf_counter()
            change(done["n"])
            call_ms.append((time.perf_counter() - start) * 1000)

        timer = QTimer()
        timer.setInterval(300)
        timer.timeout.connect(tick)
        meter.start()
        timer.start()
        run_until(lambda: done["n"] >= args.repeats, timeout_s=60)
        timer.stop()
        run_until(lambda: False, timeout_s=0.3)
        meter.stop()
        gaps = sorted(meter.gaps)[-args.repeats:]  # one repaint per change
        print(f"{label:<34} longest gap {max(gaps):5.0f} ms, median of the {args.repeats} longest "
              f"{statistics.median(gaps):4.0f} ms; the change itself {statistics.median(call_ms):4.1f} ms")

    def preview(i: int) -> None:
        mask = np.zeros(case.image.shape[:2], bool)
        mask[60:100, 60:90 + i] = True  # a new mask each time, as a preview of a training network
        widget.tracker.write_slice(z, t, mask)

    measure("nothing changes", lambda i: None)
    measure("status line text", lambda i: widget.status.setText(f"step {i}"))
    measure("loss plot", lambda i: widget.loss_plot.update())
    measure("live preview (slice on screen)", preview)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
