"""The compute thread: generator bodies and calls run on one long-lived thread."""

from __future__ import annotations

import threading

import pytest

from napari_sizeloss.compute_thread import call, compute_thread_ident, run_generator


def test_generator_body_runs_on_the_compute_thread_and_returns_its_value():
    seen = []
    closed = []

    def job():
        try:
            for i in range(3):
                seen.append(threading.get_ident())
                yield i * 10
            return "done"
        finally:
            closed.append(threading.get_ident())

    gen = run_generator(job())
    items = []
    with pytest.raises(StopIteration) as stop:
        while True:
            items.append(next(gen))
    assert items == [0, 10, 20]
    assert stop.value.value == "done"
    ident = compute_thread_ident()
    assert ident != threading.get_ident()
    assert set(seen) == set(closed) == {ident}


def test_the_same_thread_serves_every_caller():
    idents = []

    def from_worker():
        idents.append(call(threading.get_ident))

    workers = [threading.Thread(target=from_worker) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    idents.append(call(threading.get_ident))
    assert set(idents) == {compute_thread_ident()}


def test_errors_reach_the_caller_and_closing_closes_the_inner_generator():
    def failing():
        yield 1
        raise ValueError("bad bounds")

    gen = run_generator(failing())
    assert next(gen) == 1
    with pytest.raises(ValueError, match="bad bounds"):
        next(gen)

    closed = []

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.append(threading.get_ident())

    gen = run_generator(endless())
    next(gen)
    gen.close()  # what a worker's quit does
    assert closed == [compute_thread_ident()]


def test_call_from_the_compute_thread_runs_inline():
    # a job that itself calls `call` (the widget's carry job saves a model) must not deadlock
    assert call(lambda: call(threading.get_ident)) == compute_thread_ident()
