"""Screenshot of the plugin in use on the cine phantom (docs/images/plugin.png).

Opens napari with the sample phantom, opens the "Size-constrained
segmentation" widget through the plugin manifest, clicks target dots in the
LV cavity of a few slices and frames and background dots in the RV (as a user
would, through the seeds layer), estimates the bounds from the ground-truth
layer, trains for a short budget, and saves a screenshot of the whole window
(seeds, prediction overlay, widget with loss plot and size table).

Run under a virtual X server::

    xvfb-run -a -s "-screen 0 1920x1400x24" python scripts/screenshot.py [--out docs/images/plugin.png] [--steps 120]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def deepest_point(mask: np.ndarray) -> tuple[int, int] | None:
    """``(y, x)`` of the pixel of a 2D ``(Y, X)`` mask farthest from its border, or None if empty."""
    if not mask.any():
        return None
    depth = ndi.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(y), int(x)


def wait_for(app, condition, timeout_s: float) -> bool:
    """Run the Qt event loop until ``condition()`` or the timeout."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/plugin.png", help="PNG to write")
    parser.add_argument("--steps", type=int, default=120, help="training steps before the screenshot")
    parser.add_argument("--size", default="1700x1250", help="window size WxH in pixels")
    args = parser.parse_args(argv)
    # keep the user's autosave folder clean: the phantom has no file, its work goes to the data folder
    os.environ.setdefault("NAPARI_SIZELOSS_DATA_DIR", tempfile.mkdtemp(prefix="napari-sizeloss-shot-"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sizeloss._sample_data import cine_phantom_layers
    from napari_sizeloss.phantom import LABEL_LV_CAVITY, LABEL_RV

    viewer = napari.Viewer(show=True, title="napari-sizeloss")
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window.resize(width, height)
    layers = [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in cine_phantom_layers()]
    image, truth = layers
    _, widget = viewer.window.add_plugin_dock_widget("napari-sizeloss", "Size-constrained segmentation")
    app = QApplication.instance()

    seeds = widget.seeds_layer
    labels = np.asarray(truth.data)  # (T, Z, Y, X)
    T, Z = labels.shape[:2]
    frames = sorted({0, T // 3, (2 * T) // 3})
    for t in frames:
        for z in range(1, Z - 1, 2):
            lv = deepest_point(labels[t, z] == LABEL_LV_CAVITY)
            if lv is not None:
                seeds.feature_defaults["kind"] = "target"
                seeds.add([[t, z, *lv]])
            rv = deepest_point(labels[t, z] == LABEL_RV)
            if rv is not None and z % 4 == 1:
                seeds.feature_defaults["kind"] = "background"
                seeds.add([[t, z, *rv]])
    seeds.feature_defaults["kind"] = "target"
    widget.estimate_bounds(truth.name, LABEL_LV_CAVITY)
    widget.settings.expand(animate=False)
    widget.settings.ensure_loaded()
    widget.settings.steps.setValue(args.steps)
    widget.settings.collapse(animate=False)

    z_show, t_show = Z // 2, frames[1] if len(frames) > 1 else 0
    widget.go_to_slice(z_show, t_show)
    if not widget.train():
        print(f"error: training did not start: {widget.status.text()}", file=sys.stderr)
        return 2
    if not wait_for(app, lambda: widget.worker is None, timeout_s=1800):
        print("error: training did not finish in 30 minutes", file=sys.stderr)
        return 2
    if widget.last_error:
        print(f"error: {widget.last_error}", file=sys.stderr)
        return 2
    widget.go_to_slice(z_show, t_show)
    viewer.layers.selection.active = seeds
    seeds.mode = "pan_zoom"
    viewer.reset_view()
    widget.loss_plot.redraw_now()
    wait_for(app, lambda: False, timeout_s=1.0)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    rounds = widget._last_round
    print(
        f"wrote {out}: {rounds.get('steps')} steps, {rounds.get('images_per_s', 0):.1f} images/s in the GUI worker"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
