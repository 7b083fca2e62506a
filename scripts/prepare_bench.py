"""What a Train press and a prediction cost before the network runs, on a full-size cine.

On a random 256x256x10x25 cine, passed as the widget passes it (the
transposed view of a ``(T, Z, Y, X)`` layer array), times:

``normalisation``  :func:`napari_sizeloss.data.normalisation_params` (the
                   volume's 0.5th and 99.5th percentiles);
``np.percentile``  the same percentiles by numpy's sort-based selection, for
                   comparison (what the function did before 2026-12-02);
``seeds``          :func:`napari_sizeloss.weak_labels.validate_seeds` on a
                   uint8 seed volume with three dots;
``session``        building a :class:`~napari_sizeloss.trainer.TrainingSession`
                   with the interactive configuration (what a Train press
                   does in its worker before the first step; the first one
                   in a process also builds torch's state).

It prints the median over ``--repeats`` calls in this process (the session's
first build apart) and one JSON object on the last line with ``--json``.

    python scripts/prepare_bench.py [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _median_ms(call, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from napari_sizeloss.bounds import SizeBounds
    from napari_sizeloss.data import NORMALISATION_PERCENTILES, normalisation_params
    from napari_sizeloss.trainer import TrainConfig, TrainingSession
    from napari_sizeloss.weak_labels import validate_seeds

    torch.set_num_threads(2)
    layer = np.random.default_rng(0).random((25, 10, 256, 256), dtype=np.float32)
    image = layer.T  # (X, Y, Z, T), as the widget hands it over
    seeds = np.zeros(image.shape, np.uint8)
    seeds[128, 128, 2, 0] = seeds[120, 130, 3, 24] = 1
    seeds[5, 5, 2, 0] = 2

    def session():
        return TrainingSession(image, seeds, SizeBounds(100, 2000, unit="px"), config=TrainConfig.interactive(steps=1))

    def numpy_percentiles():
        return np.percentile(image[np.isfinite(image)], NORMALISATION_PERCENTILES)

    start = time.perf_counter()
    session()
    first_session_ms = (time.perf_counter() - start) * 1000
    result: dict[str, float | list[float] | str] = {"shape": "256x256x10x25", "torch_threads": 2}
    print(f"256x256x10x25 cine (a transposed view), torch {torch.__version__}, 2 threads; "
          f"median of {args.repeats} calls (ms):")
    for name, call in (
        ("normalisation", lambda: normalisation_params(image)),
        ("np.percentile", numpy_percentiles),
        ("seeds", lambda: validate_seeds(seeds, image.shape)),
        ("session", session),
    ):
        median, times = _median_ms(call, args.repeats)
        result[f"{name}_ms"] = round(median, 1)
        print(f"  {name:15s} {median:8.1f}   ({', '.join(f'{t:.0f}' for t in times)})")
    result["first_session_ms"] = round(first_session_ms, 1)
    print(f"  first session in the process: {first_session_ms:.0f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
