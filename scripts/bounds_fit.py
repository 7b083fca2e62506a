"""How well the paper's one-subject bounds fit each demo case's true LV cavity areas.

For each demo case (seed ``s``: the phantom of ``s``, bounds from subject
``s + 1`` by the paper's recipe, lower = 1.1 x its smallest slice, upper =
0.9 x its largest) prints the bounds, the case's own smallest and largest
slice areas, and how many of its slice-frames with the target lie above the
upper bound (the network is pushed to cut them) or below the lower bound.
No training: a second or two per case.

    python scripts/bounds_fit.py [--cases 16]
"""

from __future__ import annotations

import argparse

from napari_sizeloss.demo import make_demo_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16)
    args = parser.parse_args()
    print("| seed | bounds (px) | true areas (px) | slice-frames above upper | below lower | with target |")
    print("|---|---|---|---|---|---|")
    above_cases = 0
    for seed in range(args.cases):
        case = make_demo_case(seed=seed)
        areas = case.target.sum(axis=(0, 1))  # (Z, T), px
        present = areas[areas > 0]
        lo, hi = case.bounds.lower, case.bounds.upper
        above, below = int((present > hi).sum()), int((present < lo).sum())
        above_cases += above > 0
        print(f"| {seed} | {lo:.0f}-{hi:.0f} | {present.min()}-{present.max()} | {above} | {below} | {present.size} |")
    print(f"cases with slice-frames above the upper bound: {above_cases} of {args.cases}")


if __name__ == "__main__":
    main()
