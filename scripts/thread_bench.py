"""Why the GUI trains on one compute thread: torch throughput by calling thread.

Trains the demo case for ``--steps`` interactive steps per round, each case in
a fresh process:

``main``
    on the main thread only (what the CLI does);
``main, then a worker``
    the main thread trains once, then a second thread trains (what a napari
    pool thread gets once another thread of the process has run torch);
``compute thread``
    only through ``napari_sizeloss.compute_thread`` (what the widget does:
    the GUI thread itself never runs torch).

torch's CPU build keeps one OpenMP team per calling thread; once the teams
together outnumber the cores, libgomp stops spin-waiting between parallel
regions, and ENet's hundred small operators per step each pay for waking
threads up.

    python scripts/thread_bench.py [--steps 100] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading

CASES = ("main", "main, then a worker", "compute thread")


def _train(steps: int) -> float:
    from napari_sizeloss.demo import make_demo_case
    from napari_sizeloss.trainer import TrainConfig, TrainingSession

    case = make_demo_case(seed=0)
    session = TrainingSession(
        case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=TrainConfig.interactive(steps=steps)
    )
    for event in session.run():
        pass
    return event.images_per_s


def _run_case(case: str, steps: int) -> float:
    """Images/s of the measured round of ``case`` (in this process)."""
    if case == "main":
        return _train(steps)
    if case == "main, then a worker":
        _train(steps)
        out: list[float] = []
        worker = threading.Thread(target=lambda: out.append(_train(steps)))
        worker.start()
        worker.join()
        return out[0]
    from napari_sizeloss.compute_thread import call

    return call(_train, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(_run_case(args.case, args.steps))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {args.steps} steps per round")
    for case in CASES:
        rates = []
        for _ in range(args.repeats):
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--steps", str(args.steps)],
                check=True, capture_output=True, text=True,
            )
            rates.append(float(out.stdout.strip().splitlines()[-1]))
        print(f"{case:>20}: {statistics.median(rates):5.1f} images/s  (runs: {', '.join(f'{r:.1f}' for r in rates)})")


if __name__ == "__main__":
    main()
