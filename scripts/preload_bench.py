"""How long napari's window stalls while the widget loads torch, with and without the preload.

Each run is a fresh process (torch loads once per process): napari opens a
10x25x128x128 image, its event loop runs idle for a second (the first paint
is over, as when a user starts placing dots), then the widget's device probe
(``napari_sizeloss._qt.jobs.probe_devices``: the first ``import torch``,
``torch._dynamo`` and the compile check) runs on the compute thread while a
10 ms Qt timer records the longest gap between its ticks (``gui_bench``'s
meter and event loop). ``off`` replaces
:func:`napari_sizeloss.torch_preload.preload_torch_libraries` by a no-op,
``on`` is the widget as it is. The two alternate, ``--runs`` of each::

    xvfb-run -a python scripts/preload_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gui_bench import StallMeter, run_until  # noqa: E402


def child(mode: str) -> None:
    import napari
    import numpy as np

    import napari_sizeloss.torch_preload as preload
    from napari_sizeloss import compute_thread
    from napari_sizeloss._qt import jobs

    assert "torch" not in sys.modules
    if mode == "off":
        preload.preload_torch_libraries = lambda: False
    viewer = napari.Viewer()
    viewer.add_image(np.random.default_rng(0).random((10, 25, 128, 128), dtype=np.float32))
    run_until(lambda: False, timeout_s=1.0)  # the first drawing is over

    meter = StallMeter()
    meter.start()
    start = time.perf_counter()
    future = compute_thread.submit(jobs.probe_devices)
    run_until(future.done, timeout_s=120)
    future.result()
    load_s = time.perf_counter() - start
    meter.stop()
    viewer.close()
    print(json.dumps({"mode": mode, "load_s": round(load_s, 2), "longest_stall_ms": round(meter.longest(), 1),
                      "stalls_over_100ms": meter.count(100.0)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per mode, alternating")
    parser.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    results: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.runs):
        for mode in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True,
                                 check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[mode].append(result)
            print(f"{mode}: torch loaded in {result['load_s']} s, longest stall {result['longest_stall_ms']} ms, "
                  f"{result['stalls_over_100ms']} over 100 ms", flush=True)
    for mode, runs in results.items():
        print(f"{mode} (median of {len(runs)}): longest stall "
              f"{statistics.median(r['longest_stall_ms'] for r in runs):.0f} ms, "
              f"load {statistics.median(r['load_s'] for r in runs):.2f} s")


if __name__ == "__main__":
    main()
