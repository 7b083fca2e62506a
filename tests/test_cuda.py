"""The CUDA path on a real GPU: skipped where there is none (CI, the development machine).

The CPU tests cover the CUDA code's logic with CUDA faked or absent
(``test_device.py``, ``test_bench.py``); these run it. ``scripts/gpu_check.sh``
runs them on a lent GPU machine, with the bench.
"""

import numpy as np
import pytest
import torch
from test_trainer import HostReadbacks, disc_volume, small_config

from napari_sizeloss.bench import TrainStep
from napari_sizeloss.bounds import SizeBounds
from napari_sizeloss.device import autocast_dtype
from napari_sizeloss.network import ENet
from napari_sizeloss.trainer import EventKind, TrainingSession, predict_volume

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_cuda_training_step_reads_back_once_and_trains():
    image, seeds, _ = disc_volume()
    session = TrainingSession(image, seeds, SizeBounds(20, 300), config=small_config(steps=40, device="cuda"))
    assert session.device.type == "cuda"
    assert next(session.model.parameters()).is_cuda
    events = session.run()
    first = next(events)
    with HostReadbacks() as readbacks:
        steps = [next(events) for _ in range(3)]
    assert readbacks.calls == ["cpu"] * 3
    rest = [e for e in events if e.kind == EventKind.STEP]
    losses = [e.loss for e in (first, *steps, *rest)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns under mixed precision


def test_a_cuda_float32_step_computes_the_cpu_step():
    """Same weights, same batch, full precision: the weights after one step
    agree with the CPU's to rounding (cuDNN and oneDNN differ only there)."""
    # TF32 would round well beyond float32; the switches are global, so restore them
    # (torch.backends.cuda.matmul answers through __getattr__, which monkeypatch cannot undo)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = {}
        for device in ("cpu", "cuda"):
            step = TrainStep(device, size=64, batch=2)
            step()
            results[device] = [p.detach().cpu() for p in step.forward.parameters()]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for cpu, cuda in zip(results["cpu"], results["cuda"], strict=True):
        assert torch.allclose(cpu, cuda, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("tta", ["none", "flips", "dihedral"])
def test_cuda_prediction_matches_the_cpu_prediction(tta):
    """Also with the test-time views (flips and quarter turns of a non-square slice on the GPU)."""
    torch.manual_seed(0)
    model = ENet().eval()
    image = np.random.default_rng(0).random((64, 48, 3, 2), dtype=np.float32)
    on_cpu = predict_volume(model, image, normalisation="auto", device="cpu", tta=tta)
    on_gpu = predict_volume(model.to("cuda"), image, normalisation="auto", device="cuda", tta=tta)
    assert on_gpu.shape == image.shape
    tolerance = 1e-4 if autocast_dtype("cuda") is None else 3e-2  # bf16 / fp16 autocast
    assert np.abs(on_gpu - on_cpu).max() < tolerance
    assert np.mean((on_gpu > 0.5) == (on_cpu > 0.5)) > 0.99
