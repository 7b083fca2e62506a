"""One long-lived thread for the torch work a GUI starts in the background.

Why: torch's CPU build runs its operators on an OpenMP (libgomp) thread team
owned by the thread that calls them. Every thread that has called torch keeps
its own team alive, and once the teams together hold more threads than the
machine has cores, libgomp stops spin-waiting between parallel regions and
puts its threads to sleep after each one. ENet runs about a hundred small
operators per step, so every step then pays for hundreds of thread wake-ups:
on 2 cores, training in a second thread after the main thread had used
torch ran at 29 images/s against 72 on the main thread alone and 64 on this
thread alone (``python scripts/thread_bench.py``). napari's thread workers
come from a pool whose threads change from job to job, so the widget's
training, previews, prediction and model loading and saving are all handed
to this single thread, which keeps one team for the life of the process.

Qt-free: :func:`run_generator` and :func:`call` are used inside napari thread
workers, which then only wait on this thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Generator, Iterator, TypeVar

__all__ = ["call", "compute_thread_ident", "run_generator", "submit"]

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_ident: int | None = None


def _record_ident() -> int:
    global _ident
    _ident = threading.get_ident()
    return _ident


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sizeloss-compute")
            _executor.submit(_record_ident).result()
        return _executor


def compute_thread_ident() -> int:
    """``threading.get_ident()`` of the compute thread (started if needed)."""
    _get_executor()
    assert _ident is not None
    return _ident


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` on the compute thread and return (or raise) its result.

    Called from the compute thread itself it runs inline (no deadlock).
    """
    if threading.get_ident() == _ident:
        return fn(*args, **kwargs)
    return _get_executor().submit(fn, *args, **kwargs).result()


def submit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """Queue ``fn(*args, **kwargs)`` on the compute thread without waiting: its :class:`~concurrent.futures.Future`."""
    return _get_executor().submit(fn, *args, **kwargs)


def _advance(gen: Iterator[T]) -> tuple[bool, Any]:
    try:
        return False, next(gen)
    except StopIteration as stop:
        return True, stop.value


def run_generator(gen: Generator[T, None, Any]) -> Generator[T, None, Any]:
    """Yield ``gen``'s items, each computed on the compute thread.

    The generator's body (everything between two yields) runs on the compute
    thread; the caller (a napari thread worker) only receives the items. Its
    return value is returned, its exceptions are raised here, and closing this
    generator closes ``gen`` on the compute thread.
    """
    try:
        while True:
            done, item = call(_advance, gen)
            if done:
                return item
            yield item
    finally:
        call(gen.close)
