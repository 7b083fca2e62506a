"""Predicting with the last step's weights against their moving average, on several demo cases.

For each demo case (seed: phantom, dots, training streams) the bench's
time-to-quality session (``bench.time_to_quality``: Train with the
interactive defaults, then correct the 2 worst slices and train 100 more
steps) runs twice, the same training either way:

- ``last``: predictions from the last step's weights (``ema_decay=None``);
- ``average``: from their moving average (``TrainConfig(ema_decay=--decay)``, opt-in).

The training steps are the same in both; what differs is the weights that
predict, and so the slices the simulated user corrects. The Dice figures are
deterministic (fixed seeds); the times drift with the machine.

    python scripts/average_bench.py [--cases 16] [--decay 0.95] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

from napari_sizeloss.bench import time_to_quality

#: Both deterministic (fixed seeds), whatever the machine's speed: the Dice at the
#: end of the first round (300 steps; the bench's "within 60 s" is this figure when
#: the round ends within 60 s) and after the corrections round.
KEYS = ("dice_after_first_round", "dice_after_corrections")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16, help="demo cases, seeds 0..N-1")
    parser.add_argument("--decay", type=float, default=0.95, help="ema_decay of the averaged run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    decay = args.decay
    variants = {"last": None, "average": decay}
    print(f"torch {torch.__version__}, {args.threads} threads; average: ema_decay {decay}", flush=True)
    rows = {name: [] for name in variants}
    for seed in range(args.cases):
        order = list(variants) if seed % 2 == 0 else list(reversed(variants))
        line = []
        for name in order:
            q = time_to_quality(args.device, seed=seed, threads=args.threads, ema_decay=variants[name])
            rows[name].append(q)
            t85 = q["time_to_dice_085_s"]
            line.append(f"{name}: {q['dice_after_first_round']:.3f} after the first round ({q['first_round_s']:.0f} s; "
                        f"0.85 {'never' if t85 is None else f'after {t85:.0f} s'}), "
                        f"{q['dice_after_corrections']:.3f} after correcting {q['corrected_slices']}")
        print(f"seed {seed:2d}  " + "; ".join(sorted(line)), flush=True)
    n = args.cases
    for key, target in zip(KEYS, (0.85, 0.90)):
        for name in variants:
            values = [q[key] for q in rows[name]]
            print(f"{key:23s} {name:8s} median {statistics.median(values):.3f}, mean {statistics.mean(values):.3f}, "
                  f"range {min(values):.3f}-{max(values):.3f}, >= {target}: {sum(v >= target for v in values)} of {n}")
        diffs = [a[key] - b[key] for a, b in zip(rows["average"], rows["last"])]
        print(f"{key:23s} average - last: median {statistics.median(diffs):+.3f}, mean {statistics.mean(diffs):+.3f}, "
              f"better in {sum(d > 0.0005 for d in diffs)}, worse in {sum(d < -0.0005 for d in diffs)} of {n}")


if __name__ == "__main__":
    main()
