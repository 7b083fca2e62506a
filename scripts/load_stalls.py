"""Where a compiled training round holds Python's interpreter lock, without a GUI.

Trains a few compiled steps of the demo case on the compute thread (as the
widget does, compiling ahead in a child process first) while the main
thread ticks every 5 ms. A tick that comes late by more than ``--over`` ms
means another thread held the interpreter lock that long: in napari, the
window would have frozen as long. For each such gap it prints where the
compute thread was when the main thread got the lock back (the code that
held it, or the line just after), and it lists the garbage collections that
took over 30 ms.

Run it twice with the same ``TORCHINDUCTOR_CACHE_DIR``: the first run
compiles (minutes), the second loads from the cache, which is what the
widget's Compile box does on every later round of a new crop size::

    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor python scripts/load_stalls.py [--steps 3] [--over 80]
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
import traceback


def _where(frame, depth: int = 4) -> str:
    """The innermost ``depth`` frames of ``frame``, innermost first, as ``file:line:function``."""
    stack = traceback.extract_stack(frame)[-depth:]
    return " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}:{f.name}" for f in reversed(stack))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="compiled training steps")
    parser.add_argument("--over", type=float, default=80.0, help="report gaps longer than this many ms")
    args = parser.parse_args(argv)

    import torch

    from napari_sizeloss.compiled import compile_unavailable_reason
    from napari_sizeloss.compute_thread import call
    from napari_sizeloss.demo import make_demo_case
    from napari_sizeloss.trainer import TrainConfig, TrainingSession

    reason = compile_unavailable_reason(torch.device("cpu"))
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    case = make_demo_case(seed=0)
    config = TrainConfig.interactive(steps=args.steps, compile=True, compile_ahead=True, preview_every=0)
    session = TrainingSession(case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=config)

    t0 = time.perf_counter()
    collections: list[tuple[float, int, float]] = []
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif (took := time.perf_counter() - started["t"]) > 0.03:
            collections.append((started["t"] - t0, info["generation"], took * 1000))

    gaps: list[tuple[float, float, str]] = []
    done = threading.Event()
    me = threading.get_ident()

    def run() -> None:
        try:
            call(lambda: list(session.run()))
        finally:
            done.set()

    gc.callbacks.append(on_gc)
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    last = time.perf_counter()
    while not done.is_set():
        time.sleep(0.005)
        now = time.perf_counter()
        if (now - last) * 1000 > args.over:
            others = [f for tid, f in sys._current_frames().items() if tid != me]
            busy = [_where(f) for f in others if "threading.py" not in f.f_code.co_filename]
            gaps.append((last - t0, (now - last) * 1000, busy[0] if busy else "?"))
        last = now
    worker.join()
    gc.callbacks.remove(on_gc)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} compiled steps "
          f"(compiled ahead, then loaded here) in {time.perf_counter() - t0:.1f} s, "
          f"{session.total_steps_done} steps done")
    print(f"main thread kept from running for over {args.over:.0f} ms: {len(gaps)} times, "
          f"longest {max((g[1] for g in gaps), default=0):.0f} ms")
    for at, ms, where in gaps:
        print(f"  at {at:6.2f} s  {ms:5.0f} ms  {where[:400]}")
    print(f"garbage collections over 30 ms: {len(collections)}")
    for at, generation, ms in collections:
        print(f"  at {at:6.2f} s  generation {generation}  {ms:5.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
