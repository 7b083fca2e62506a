"""Device selection, autocast and threads (on this CPU-only machine; GPUs are simulated)."""

import copy

import pytest
import torch

from napari_sizeloss import device as dev
from napari_sizeloss.device import (
    DeviceError,
    autocast,
    autocast_dtype,
    available_devices,
    configure_threads,
    is_channels_last,
    make_adam,
    match_state_layouts,
    select_device,
    to_channels_last,
    uses_channels_last,
)

needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available() or dev._mps_available(), reason="checks the CPU-only behaviour"
)


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend two CUDA devices (bfloat16 capable) are visible and MPS is not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


@pytest.fixture
def mps_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)


# ------------------------------------------------------------------ CPU-only machine
@needs_no_gpu
def test_auto_is_cpu_without_accelerators():
    assert select_device() == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    assert available_devices() == ["cpu"]


@needs_no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA"])
def test_cuda_without_cuda_is_a_one_line_error(name):
    with pytest.raises(DeviceError) as info:
        select_device(name)
    message = str(info.value)
    assert message == f"device {name.lower()!r} requested but CUDA is not available; available: cpu"
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


@needs_no_gpu
def test_mps_without_mps_is_an_error():
    with pytest.raises(DeviceError, match="MPS is not available; available: cpu"):
        select_device("mps")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "cpu:1", "mps:0", "", "cuda:-1"])
def test_unknown_names_are_refused(name):
    with pytest.raises(DeviceError, match=r"unknown device .*choose auto, cpu, cuda, cuda:N or mps; available: .*cpu"):
        select_device(name)


def test_cpu_is_always_honoured():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    assert "cpu" in available_devices()


def test_first_available_device_is_what_auto_picks():
    assert select_device(available_devices()[0]).type == select_device("auto").type


# ------------------------------------------------------------------ simulated accelerators
def test_auto_prefers_cuda(two_gpus):
    assert select_device("auto") == torch.device("cuda")
    assert available_devices() == ["cuda:0", "cuda:1", "cpu"]
    for name in available_devices():
        select_device(name)


def test_cuda_index_must_exist(two_gpus):
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"'cuda:2' requested but only 2 CUDA device\(s\) are visible; available: cuda:0, cuda:1, cpu"):
        select_device("cuda:2")


def test_single_gpu_is_listed_as_cuda(monkeypatch, two_gpus):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert available_devices() == ["cuda", "cpu"]


def test_auto_falls_back_to_mps(mps_only):
    assert select_device("auto") == torch.device("mps")
    assert available_devices() == ["mps", "cpu"]
    with pytest.raises(DeviceError, match="CUDA is not available; available: mps, cpu"):
        select_device("cuda")


# ------------------------------------------------------------------ autocast
def test_autocast_on_cpu_is_a_no_op():
    a, b = torch.rand(4, 8), torch.rand(8, 3)
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", enabled=True):
        assert not torch.is_autocast_enabled("cpu")
    assert autocast_dtype("cpu") is None


def test_autocast_on_cpu_with_an_explicit_dtype():
    a, b = torch.rand(4, 8), torch.rand(8, 3)
    with autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", enabled=False, dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.float32


def test_autocast_precision_on_cuda(two_gpus, monkeypatch):
    assert autocast_dtype("cuda") == torch.bfloat16
    assert autocast_dtype("cuda", prefer_bf16=False) == torch.float16
    assert autocast_dtype("cuda", dtype=torch.float16) == torch.float16
    assert autocast_dtype("cuda", enabled=False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda", 1)) == torch.float16


def test_autocast_is_fresh_for_every_use():
    """The trainer enters it once per step: each call gives a usable context."""
    for _ in range(3):
        with autocast("cpu", dtype=torch.bfloat16):
            assert torch.is_autocast_enabled("cpu")
        assert not torch.is_autocast_enabled("cpu")


# ------------------------------------------------------------------ memory format, threads
def test_channels_last_on_cuda_and_the_cpu_not_mps():
    assert uses_channels_last(torch.device("cuda", 0))
    assert uses_channels_last("cuda")
    assert uses_channels_last("cpu")
    assert not uses_channels_last(torch.device("mps"))


def _channels_last_strides(x):
    n, c, h, w = x.shape
    return (c * h * w, 1, w * c, c)


def test_to_channels_last_restrides_one_channel_batches_that_contiguous_leaves_alone():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    assert x.contiguous(memory_format=torch.channels_last).stride() == x.stride()  # the trap
    y = to_channels_last(x)
    assert y.stride() == _channels_last_strides(y)
    assert torch.equal(y, x)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).to(memory_format=torch.channels_last)
    out = conv(y)
    assert out.stride() == _channels_last_strides(out)  # the network sees channels-last from its first layer
    z = to_channels_last(torch.rand(2, 3, 5, 5))
    assert z.stride() == _channels_last_strides(z) and to_channels_last(z) is z


def test_is_channels_last_reads_the_weights_layout():
    from napari_sizeloss.network import ENet

    model = ENet()
    assert not is_channels_last(model)
    model.to(memory_format=torch.channels_last)
    assert is_channels_last(model)
    model.to(memory_format=torch.contiguous_format)
    assert not is_channels_last(model)
    assert not is_channels_last(torch.nn.Linear(3, 2))  # no 4-D weight


def test_loaded_adam_moments_follow_channels_last_parameters():
    """Contiguous moments (as a checkpoint stores them) with channels-last parameters corrupt torch's fused
    Adam unless match_state_layouts lays them out; make_adam's FlatAdam copies them in by index anyway."""
    g = torch.Generator().manual_seed(0)
    start, grads = torch.randn(8, 4, 3, 3, generator=g), [torch.randn(8, 4, 3, 3, generator=g) for _ in range(2)]

    def two_steps(layout, fix, make=lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True)):
        p = torch.nn.Parameter(start.clone().to(memory_format=layout))
        opt = make([p])
        p.grad = grads[0].clone().to(memory_format=layout)
        opt.step()
        saved = copy.deepcopy(opt.state_dict())
        for key in ("exp_avg", "exp_avg_sq"):
            saved["state"][0][key] = saved["state"][0][key].contiguous()
        opt = make([p])
        opt.load_state_dict(saved)
        if fix:
            match_state_layouts(opt)
            assert all(v.stride() == p.stride() for v in opt.state[p].values() if v.dim() == 4)
        p.grad = grads[1].clone().to(memory_format=layout)
        opt.step()
        return p.detach().contiguous()

    reference = two_steps(torch.contiguous_format, fix=False)
    assert torch.allclose(two_steps(torch.channels_last, fix=True), reference, atol=1e-6)
    assert not torch.allclose(two_steps(torch.channels_last, fix=False), reference, atol=1e-3)  # the bug it prevents
    flat = lambda ps: make_adam(ps, 0.1, "cpu")  # noqa: E731
    assert torch.allclose(two_steps(torch.channels_last, fix=False, make=flat), reference, atol=1e-6)


def test_configure_threads():
    before = torch.get_num_threads()
    try:
        assert configure_threads(None) == before
        assert configure_threads(2) == 2
        assert torch.get_num_threads() == 2
        assert configure_threads(None) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_configure_threads_refuses_nonsense(bad):
    before = torch.get_num_threads()
    with pytest.raises(DeviceError, match="threads"):
        configure_threads(bad)
    assert torch.get_num_threads() == before
