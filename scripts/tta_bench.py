"""Test-time views against one forward pass, on the demo cases: 3D Dice per case.

    python scripts/tta_bench.py [--seeds 0 1 ...] [--threads 2]

For each demo case (phantom, dots and training seed) the bench's session
(``napari-sizeloss bench``: interactive defaults, 300 steps, no tags) trains
once; its mask is scored with each of the test-time views (``none``,
``flips``, ``dihedral``: :mod:`napari_sizeloss.tta`). Then the 2 worst slices
of the one-pass mask are corrected (as the bench's simulated user, with
widened bounds) and 300 more steps train, scored again with each. Training
is the same for every view, so the columns differ by the prediction only.
Prints one JSON line per case, then a summary. About 2 minutes a case on 2
CPU cores.

    python scripts/tta_bench.py --time [--rounds 3]

times instead what each mode costs: predicting a 256x256x10x25 cine inside
the trainer's 96x96 region of interest (``bench``'s row), the modes in
turn, order flipped each round, medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics

from napari_sizeloss.config import TTA_MODES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(16)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time", action="store_true", help="time each mode's prediction instead")
    parser.add_argument("--rounds", type=int, default=3, help="with --time: rounds of the modes in turn")
    args = parser.parse_args()
    if args.time:
        time_modes(args.rounds, args.threads)
        return

    import numpy as np

    from napari_sizeloss.bench import correct_worst_slices
    from napari_sizeloss.demo import make_demo_case
    from napari_sizeloss.metrics import dice_3d
    from napari_sizeloss.trainer import TrainConfig, TrainingSession

    def scores(session, target):
        return {m: round(float(np.mean(dice_3d(session.predict(tta=m), target))), 4) for m in TTA_MODES}

    rows = []
    for seed in args.seeds:
        case = make_demo_case(seed=seed)
        config = TrainConfig.interactive(device="cpu", seed=seed, preview_every=0, threads=args.threads,
                                         tta="none")  # the corrected slices: the worst of the one-pass mask
        session = TrainingSession(case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=config)
        for _ in session.run():
            pass
        first = scores(session, case.target)
        correct_worst_slices(session, case)
        for _ in session.run():
            pass
        row = {"seed": seed, "first": first, "corr": scores(session, case.target)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for when, label, level in (("first", "first round (300 steps)", 0.85), ("corr", "after corrections", 0.90)):
        for mode in TTA_MODES:
            values = [r[when][mode] for r in rows]
            gains = [r[when][mode] - r[when]["none"] for r in rows]
            print(f"{label}, {mode}: 3D Dice {min(values):.3f}-{max(values):.3f} (median "
                  f"{statistics.median(values):.3f}), {sum(v >= level for v in values)} of {len(values)} at "
                  f"{level} or more; against none {statistics.mean(gains):+.4f} on average "
                  f"({min(gains):+.4f} to {max(gains):+.4f}), better on {sum(g > 0 for g in gains)}, "
                  f"worse on {sum(g < 0 for g in gains)}")


def time_modes(rounds: int, threads: int) -> None:
    """Seconds to predict a 256x256x10x25 cine inside a 96x96 box, per mode: the modes in turn, medians."""
    import torch

    from napari_sizeloss.bench import predict_cine_s

    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {mode: [] for mode in TTA_MODES}
    for r in range(rounds):
        for mode in TTA_MODES if r % 2 == 0 else TTA_MODES[::-1]:
            times[mode].append(predict_cine_s(torch.device("cpu"), box_side=96, repeats=1, tta=mode))
    for mode, values in times.items():
        print(f"{mode}: predict a 256x256x10x25 cine inside 96x96: {', '.join(f'{v:.2f}' for v in values)} s, "
              f"median {statistics.median(values):.2f} s", flush=True)


if __name__ == "__main__":
    main()
