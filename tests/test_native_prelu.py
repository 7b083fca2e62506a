"""The compiled in-place PReLU: the same bits as torch.prelu, a clean fallback, and ENet's prediction unchanged."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_sizeloss import native_op, native_prelu
from napari_sizeloss.network import (
    DownsamplingBottleneck,
    ENet,
    PReLU,
    RegularBottleneck,
    UpsamplingBottleneck,
    with_torch_prelu,
)

HAS_COMPILER = sys.platform.startswith("linux") and any(
    shutil.which(c) for c in (os.environ.get("CC") or "cc", "cc", "gcc")
)
needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="the kernel is built on Linux with a C compiler only")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state in which the kernel was never loaded, caching under ``tmp_path``."""
    monkeypatch.setitem(native_prelu._state, "lib", None)
    monkeypatch.setitem(native_prelu._state, "status", None)
    monkeypatch.setenv(native_prelu.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(native_prelu.ENV_SWITCH, raising=False)
    return tmp_path / "cache" / "native"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@needs_kernel
def test_the_kernel_is_built_and_used_where_a_compiler_exists():
    assert native_prelu.load() is not None, native_prelu.status()
    assert native_prelu.status().startswith("in use")


@needs_kernel
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (2, 5, 7, 9), (4, 16, 64, 64), (3, 128, 33, 17)])
@pytest.mark.parametrize("threads", [1, 2])
def test_prelu_in_place_gives_torchs_bits(layout, shape, threads):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) * 4
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -1e-42, 1e-42, -2.0, 3.0])
    n = min(special.numel(), x.numel())
    x.view(-1)[:n] = special[:n]
    x = x.contiguous(memory_format=layout)
    weight = torch.randn(shape[1], generator=gen)
    weight[0] = 0.0
    expected = torch.prelu(x, weight)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pointer = x.data_ptr()
        assert native_prelu.prelu_(x, weight)
    finally:
        torch.set_num_threads(before)
    assert x.data_ptr() == pointer
    assert torch.equal(_bits(x), _bits(expected))


@needs_kernel
def test_prelu_in_place_differs_from_a_wrong_slope_per_channel():
    # the channel order matters: slopes read for the wrong channel would show here
    x = -torch.ones(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    assert native_prelu.prelu_(x, torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-0.1, -0.2, -0.3]))
    y = -torch.ones(2, 3, 2, 2)
    assert native_prelu.prelu_(y, torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(y[1, :, 1, 1], torch.tensor([-0.1, -0.2, -0.3]))


@needs_kernel
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape, added", [((2, 16, 9, 7), 16), ((2, 64, 32, 32), 16), ((3, 5, 4, 4), 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_sum_and_prelu_in_place_gives_torchs_bits(layout, shape, added, threads):
    gen = torch.Generator().manual_seed(sum(shape) + added)
    y = torch.randn(shape, generator=gen) * 3
    a = torch.randn((shape[0], added, *shape[2:]), generator=gen) * 3
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -1e-42, 1e-30, -2.0])
    a.view(-1)[: special.numel()] = special
    y.view(-1)[: special.numel()] = -special.flip(0)
    y, a = y.contiguous(memory_format=layout), a.contiguous(memory_format=layout)
    weight = torch.randn(shape[1], generator=gen)
    summed = y.clone()
    summed[:, :added] += a
    expected = torch.prelu(summed, weight)
    a_before = a.clone()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert native_prelu.add_prelu_(y, a, weight)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(_bits(y), _bits(expected))
    assert torch.equal(_bits(a), _bits(a_before))


@pytest.mark.parametrize(
    "make",
    [
        lambda y: y[:, :4],  # shares y's memory
        lambda y: torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last),  # the other layout
        lambda y: torch.randn(2, 4, 6, 5),  # another size
        lambda y: torch.randn(3, 4, 6, 6),  # another batch
        lambda y: torch.randn(2, 9, 6, 6),  # more channels than y
        lambda y: torch.randn(2, 4, 6, 6, dtype=torch.float64),
    ],
)
def test_sum_and_prelu_refuses_what_it_cannot_do_and_leaves_both(make):
    y = torch.randn(2, 8, 6, 6)
    a = make(y)
    y_before, a_before = y.clone(), a.clone()
    assert not native_prelu.add_prelu_(y, a, torch.full((8,), 0.5))
    assert torch.equal(y, y_before) and torch.equal(a, a_before)


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 3, 4, 4, dtype=torch.float64),  # another dtype
        lambda: torch.randn(2, 3, 4, 4, requires_grad=True),  # wants gradients
        lambda: torch.randn(2, 3, 4, 8)[..., ::2],  # strided view
        lambda: torch.randn(2, 4, 4, 3).permute(0, 3, 2, 1),  # neither layout
        lambda: torch.randn(2, 3, 16),  # not 4-D
        lambda: torch.randn(2, 3, 4, 4).as_subclass(_Sub),  # a tensor subclass
        lambda: torch.empty(0, 3, 4, 4),  # empty
    ],
)
def test_prelu_in_place_refuses_what_it_cannot_do_and_leaves_it(make):
    x = make()
    weight = torch.full((x.shape[1],), 0.5)
    before = x.detach().clone()
    assert not native_prelu.prelu_(x, weight)
    assert torch.equal(x.detach(), before)


def test_prelu_in_place_refuses_a_shared_slope_or_a_wrong_count():
    x = -torch.ones(1, 3, 4, 4)
    assert not native_prelu.prelu_(x, torch.tensor([0.5]))
    assert not native_prelu.prelu_(x, torch.tensor([0.5, 0.5]))
    assert not native_prelu.prelu_(x, torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(x, -torch.ones(1, 3, 4, 4))


def test_switched_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv(native_prelu.ENV_SWITCH, "0")
    x = -torch.ones(1, 2, 4, 4)
    assert not native_prelu.prelu_(x, torch.tensor([0.5, 0.5]))
    assert torch.equal(x, -torch.ones(1, 2, 4, 4))
    assert native_prelu.status().startswith("off")
    assert not fresh.exists()  # nothing built


def test_no_compiler_means_torchs_prelu(fresh, monkeypatch):
    monkeypatch.setattr(native_prelu, "_compiler", lambda: None)
    assert native_prelu.load() is None
    assert native_prelu.status() == "no C compiler (cc, gcc or $CC)"
    assert not fresh.exists()


@needs_kernel
def test_a_failing_compiler_is_one_line_and_leaves_nothing(fresh, monkeypatch, tmp_path):
    broken = tmp_path / "brokencc"
    broken.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo brokencc 1.0; exit 0; fi\n"
                      "echo 'brokencc: error: cannot compile' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native_prelu.load() is None
    status = native_prelu.status()
    assert status == "unavailable (RuntimeError: brokencc failed: brokencc: error: cannot compile)"
    assert "\n" not in status
    assert list(fresh.iterdir()) == []  # no half-written library, no temporary folder
    x = -torch.ones(1, 2, 4, 4)
    assert not native_prelu.prelu_(x, torch.tensor([0.5, 0.5]))


@needs_kernel
def test_built_once_then_loaded_from_the_cache(fresh, monkeypatch):
    assert native_prelu.load() is not None
    built = list(fresh.glob("prelu-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setitem(native_prelu._state, "status", None)
    monkeypatch.setattr(native_prelu, "_build", lambda *a: pytest.fail("rebuilt a cached library"))
    assert native_prelu.load() is not None
    assert built[0].stat().st_mtime_ns == stamp


@needs_kernel
def test_a_corrupt_cached_library_is_rebuilt(fresh, monkeypatch):
    assert native_prelu.load() is not None
    (cached,) = fresh.glob("prelu-*.so")
    cached.unlink()  # a new file: writing over the one this process has mapped would crash it
    cached.write_bytes(b"not a shared library")
    # the next session (this process would get its loaded copy back for the same path)
    result = subprocess.run([sys.executable, "-c", "from napari_sizeloss import native_prelu as n; print(n.status())"],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("in use"), result.stdout
    assert cached.read_bytes()[:4] == b"\x7fELF"


@needs_kernel
def test_a_cache_folder_that_cannot_be_made_builds_for_this_process(monkeypatch, tmp_path):
    monkeypatch.setitem(native_prelu._state, "lib", None)
    monkeypatch.setitem(native_prelu._state, "status", None)
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    monkeypatch.setenv(native_prelu.CACHE_ENV, str(blocker))
    assert native_prelu.load() is not None, native_prelu.status()
    assert blocker.read_text() == "in the way"


@needs_kernel
def test_a_kernel_that_fails_its_check_is_not_used(fresh, monkeypatch):
    wrong = native_prelu.SOURCE.replace("select_bits(z > 0.0f, z, w * z);", "select_bits(z > 0.0f, z, w * z * 0.5f);")
    assert wrong != native_prelu.SOURCE  # the fault is in
    monkeypatch.setattr(native_prelu, "SOURCE", wrong)
    assert native_prelu.load() is None
    assert native_prelu.status() == "unavailable (RuntimeError: the compiled PReLU differs from torch.prelu)"


def _small_enet(channels_last: bool) -> ENet:
    torch.manual_seed(3)
    model = ENet(in_channels=1, num_classes=2)
    with torch.no_grad():  # slopes and statistics away from their initial values, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(-0.3, 1.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


@needs_kernel
@pytest.mark.parametrize("channels_last", [True, False])
def test_enet_prediction_is_the_same_to_the_bit_with_the_kernel(channels_last):
    model = _small_enet(channels_last)
    reference = with_torch_prelu(_small_enet(channels_last))
    x = torch.randn(3, 1, 48, 40)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = {"prelu": 0, "add_prelu": 0}
    real, real_add = native_prelu._run, native_prelu._run_add

    def counted(name, fn):
        def run(*args):
            done = fn(*args)
            calls[name] += done
            return done

        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native_prelu, "_run", counted("prelu", real))
        mp.setattr(native_prelu, "_run_add", counted("add_prelu", real_add))
        with torch.inference_mode():
            fast = model(x)
        with torch.no_grad():
            fast_no_grad = model(x)
    with torch.no_grad():
        expected = reference(x)
    # every PReLU ran compiled; each bottleneck's last one together with its residual sum
    bottlenecks = sum(isinstance(m, (RegularBottleneck, DownsamplingBottleneck, UpsamplingBottleneck))
                      for m in model.modules())
    assert calls["add_prelu"] == 2 * bottlenecks == 2 * 27
    assert calls["prelu"] + calls["add_prelu"] == 2 * sum(isinstance(m, PReLU) for m in model.modules())
    assert torch.equal(_bits(fast), _bits(expected))
    assert torch.equal(_bits(fast_no_grad), _bits(expected))


def test_prelu_module_writes_in_place_only_without_gradients_and_not_when_tracing():
    prelu = PReLU(3)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = prelu(x)
    assert (y.data_ptr() == x.data_ptr()) == (native_prelu.load() is not None)
    x = torch.randn(2, 3, 8, 8)
    y = prelu(x)  # gradients: the autograd path, a new tensor
    assert y.data_ptr() != x.data_ptr() and y.requires_grad
    # a trace must record the PReLU: the compiled kernel's write would be missing from it
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), PReLU(3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, 0.5, 2.0]))
        traced = torch.jit.trace(model, torch.randn(2, 1, 8, 8), check_trace=False)
        other = torch.randn(2, 1, 8, 8)
        assert torch.equal(traced(other), model(other))
        assert (traced(other) < 0).any()


def test_predict_volume_is_the_same_with_and_without_the_kernel(monkeypatch):
    from napari_sizeloss.inference import FOLD_MIN_PIXELS
    from napari_sizeloss.trainer import predict_volume

    model = _small_enet(False)
    rng = np.random.default_rng(5)
    side = 64
    slices = FOLD_MIN_PIXELS // (side * side) + 2  # large enough to fold
    image = rng.normal(size=(side, side, slices)).astype(np.float32)
    with_kernel = predict_volume(model, image, normalisation=None)
    monkeypatch.setitem(native_prelu._state, "lib", None)
    monkeypatch.setitem(native_prelu._state, "status", "off (test)")
    without = predict_volume(model, image, normalisation=None)
    assert with_kernel.shape == image.shape
    assert np.array_equal(with_kernel.view(np.int32), without.view(np.int32))


@needs_kernel
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (2, 5, 7, 9), (4, 16, 64, 64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_prelu_out_of_place_and_its_backward_give_the_bits_of_torchs_operators(layout, shape, threads):
    gen = torch.Generator().manual_seed(7 + sum(shape))
    x = torch.randn(shape, generator=gen) * 3
    grad = torch.randn(shape, generator=gen)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -1e-42, 1e-42, -2.0, 3.0])
    n = min(special.numel(), x.numel())
    x.view(-1)[:n] = special[:n]
    grad.view(-1)[-n:] = special[:n]
    x, grad = x.contiguous(memory_format=layout), grad.contiguous(memory_format=layout)
    weight = torch.randn(shape[1], generator=gen)
    x_before = x.clone()
    grad_pos = torch.ops.aten.threshold_backward.default(grad, x, 0)
    grad_neg = grad - grad_pos
    expected_grad_x = torch.addcmul(grad_pos, grad_neg, weight.view(1, -1, 1, 1))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = native_prelu.prelu(x, weight)
        grad_x, terms = native_prelu.prelu_backward(grad, x, weight)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(_bits(y), _bits(torch.prelu(x, weight)))
    assert y.is_contiguous(memory_format=layout)
    assert torch.equal(_bits(grad_x), _bits(expected_grad_x))
    assert torch.equal(_bits(terms), _bits(grad_neg * x))
    assert torch.equal(_bits(x), _bits(x_before))  # read only


def test_prelu_backward_refuses_mixed_layouts_and_shapes():
    x = torch.randn(2, 3, 4, 5)
    weight = torch.full((3,), 0.5)
    assert native_prelu.prelu_backward(x.contiguous(memory_format=torch.channels_last), x, weight) is None
    assert native_prelu.prelu_backward(torch.randn(2, 3, 4, 4), x, weight) is None
    assert native_prelu.prelu_backward(x.double(), x.double(), weight) is None
    assert native_prelu.prelu(x[..., ::2], weight) is None


@needs_kernel
@pytest.mark.parametrize("channels_last", [True, False])
def test_enet_training_step_is_the_same_to_the_bit_with_the_kernel(channels_last, monkeypatch):
    """Forward (dropout on), loss, every gradient and the batch-norm statistics: kernel on and off.

    Through the Python function (the C++ operator of ``native_op``, which calls
    the same kernels, off: ``tests/test_native_op.py`` checks it).
    """
    monkeypatch.setattr(native_op, "OP", None)
    monkeypatch.setattr(native_op, "BN_PRELU", None)  # (fused batch norm + PReLU: tests/test_native_op.py)
    monkeypatch.setattr(native_op, "SUM_PRELU", None)  # (fused bottleneck ends: tests/test_fused_ends.py)
    loaded = {"lib": native_prelu.load(), "status": native_prelu.status()}
    x = torch.randn(2, 1, 40, 48)
    target = torch.randint(0, 2, (2, 40, 48))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = {}
    calls = {"out": 0, "backward": 0}
    for use in (True, False):
        monkeypatch.setitem(native_prelu._state, "lib", loaded["lib"] if use else None)
        monkeypatch.setitem(native_prelu._state, "status", loaded["status"] if use else "off (test)")
        torch.manual_seed(11)
        model = ENet(in_channels=1, num_classes=2).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        with pytest.MonkeyPatch.context() as mp:
            for name, key in (("_run_out", "out"), ("_run_backward", "backward")):
                real = getattr(native_prelu, name)

                def counted(*args, real=real, key=key):
                    result = real(*args)
                    calls[key] += result is not None
                    return result

                mp.setattr(native_prelu, name, counted)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, target)
            loss.backward()
        results[use] = [logits.detach(), loss.detach()] + [p.grad for p in model.parameters()] + list(model.buffers())
    prelus = sum(isinstance(m, PReLU) for m in model.modules())
    assert calls == {"out": prelus, "backward": prelus}  # each PReLU of the step ran compiled, with the kernel on
    for a, b in zip(results[True], results[False], strict=True):
        assert torch.equal(_bits(a.float()), _bits(b.float()))
