"""The corrections round under different learning-rate schedules, from the same first round.

For each demo case the first round is trained once (the bench's session:
``bench.time_to_quality``'s Train press with the interactive defaults), the
two worst slices are corrected as the bench's simulated user does (bounds
widened to admit them), and the session's state (weights, optimiser
moments, random streams) is saved. Each variant then runs the corrections
round from that same state, scored every 12 steps:

- ``final``: the 3D Dice at the round's end (what the bench reports);
- ``lowest``: the lowest score after the first 12 steps (how far a preview
  can fall while the round runs: a user who stops then keeps that mask);
- ``mean``: the mean score over the round.

Variants (``--variants``): ``now`` (the trainer's schedule: half the
learning rate when continuing, cosine decay), ``quarter`` (a quarter of it
when continuing), ``warmup`` (``now`` with a linear warm-up over the first
10% of the round).

    python scripts/corrections_bench.py [--cases 8] [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import numpy as np


def snapshot(session) -> dict:
    """Everything a round changes: weights, optimiser state, random streams, step counters."""
    import torch

    return {
        "model": copy.deepcopy(session.model.state_dict()),
        "optimizer": copy.deepcopy(session.optimizer.state_dict()),
        "rng": copy.deepcopy(session._rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "total_steps_done": session.total_steps_done,
        "epoch": session.epoch,
    }


def restore(session, state: dict) -> None:
    import torch

    from napari_sizeloss.device import match_state_layouts

    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    match_state_layouts(session.optimizer)
    session._rng.bit_generator.state = copy.deepcopy(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    session.total_steps_done = state["total_steps_done"]
    session.epoch = state["epoch"]


def with_warmup(session, fraction: float):
    """``session._current_lr`` with a linear ramp over the first ``fraction`` of the round."""
    plain = session._current_lr

    def current_lr(progress: float = 0.0) -> float:
        ramp = min(1.0, (progress + 1.0 / session.config.steps) / fraction) if fraction > 0 else 1.0
        return plain(progress) * ramp

    return current_lr


def corrections_round(session, target, variant: str, steps: int, every: int = 12) -> list[float]:
    from napari_sizeloss.bench import _score

    session.config.steps = steps
    session.config.resume_lr_factor = 0.25 if variant == "quarter" else 0.5
    session.__dict__.pop("_current_lr", None)  # the class's schedule
    if variant == "warmup":
        session._current_lr = with_warmup(session, 0.1)
    curve = []
    for event in session.run():
        if event.kind.value == "step" and event.step % every == 0:
            curve.append(_score(session, target))
    curve.append(_score(session, target))
    return curve


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8, help="demo cases (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=300, help="steps of the corrections round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["now", "quarter", "warmup"],
                        choices=["now", "quarter", "warmup"])
    args = parser.parse_args(argv)

    from napari_sizeloss.bench import _score, correct_worst_slices
    from napari_sizeloss.demo import make_demo_case
    from napari_sizeloss.trainer import TrainConfig, TrainingSession

    rows = {v: [] for v in args.variants}
    for seed in range(args.cases):
        case = make_demo_case(seed=seed)
        config = TrainConfig.interactive(device="cpu", seed=seed, preview_every=0, threads=args.threads)
        session = TrainingSession(case.image, case.seeds, case.bounds, spacing=case.phantom.spacing,
                                  config=config, absent=np.zeros(case.image.shape[2:], bool))
        for _ in session.run():
            pass
        first = _score(session, case.target)
        correct_worst_slices(session, case)
        state = snapshot(session)
        line = [f"seed {seed}: first round {first:.4f}"]
        for variant in args.variants:
            restore(session, state)
            curve = corrections_round(session, case.target, variant, args.steps)
            result = {"final": curve[-1], "lowest": min(curve[1:]), "mean": float(np.mean(curve))}
            rows[variant].append(result)
            line.append(f"{variant} final {result['final']:.4f} lowest {result['lowest']:.4f} "
                        f"mean {result['mean']:.4f}")
        print("; ".join(line), flush=True)
    for variant, results in rows.items():
        finals = [r["final"] for r in results]
        print(f"{variant}: final median {statistics.median(finals):.4f}, mean {np.mean(finals):.4f}, "
              f"{sum(f >= 0.9 for f in finals)} of {len(finals)} at 0.90; lowest after 12 steps: median "
              f"{statistics.median(r['lowest'] for r in results):.4f}, worst {min(r['lowest'] for r in results):.4f}; "
              f"mean over the round {np.mean([r['mean'] for r in results]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
