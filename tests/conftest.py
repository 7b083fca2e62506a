"""Shared test configuration: deterministic, small, single-threaded torch."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _training_operator():
    """ENet's C++ training operator loaded, or built (about 20 s on a fresh machine), before any test.

    Otherwise a background build would land part-way through the session and
    tests would train through it or not depending on their order.
    """
    from napari_sizeloss import native_op

    native_op.wait(timeout=900)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def predicted_tta(monkeypatch):
    """The ``tta`` of every ``trainer.predict_volume`` call, in order (the calls still run)."""
    from napari_sizeloss import trainer

    seen: list[str] = []
    real = trainer.predict_volume

    def recording(*args, **kwargs):
        seen.append(kwargs.get("tta", "none"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "predict_volume", recording)
    return seen
