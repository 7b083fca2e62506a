"""The C++ training operator: torch's bits through it, a clean fallback, and a build that never blocks or crashes."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from _native import needs_op

from napari_sizeloss import native_op, native_prelu
from napari_sizeloss.network import ENet, PReLU, _PReLUFunction


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state in which the operator was never tried, caching under ``tmp_path``.

    Only for paths that load no library: a second library of the namespace
    cannot be loaded into one process (the ones that do run in a subprocess).
    """
    monkeypatch.setattr(native_op, "OP", None)
    monkeypatch.setattr(native_op, "BN_PRELU", None)
    monkeypatch.setattr(native_op, "_state", {"tried": False, "status": "not started (test)", "thread": None})
    monkeypatch.setenv(native_prelu.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(native_prelu.ENV_SWITCH, raising=False)
    return tmp_path / "cache" / "native"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _op():
    assert native_op.wait(timeout=600), native_op.status()
    return native_op.OP


@needs_op
def test_the_operator_is_built_and_used_where_a_cxx_compiler_exists():
    assert _op() is not None
    assert native_op.status().startswith("in use")
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    assert "PReLUFunction" in PReLU(8)(x).grad_fn.name()  # the module trains through it


@needs_op
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("grad_layout", ["same", "other"])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_forward_and_backward_are_the_python_functions_bits(layout, grad_layout, needs, threads):
    op = _op()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 16, 40, 24, generator=gen) * 2  # 46k elements: the kernels' threaded range
    x[0, :, :3] = 0.0
    x[1, 0, 0, :4] = torch.tensor([-0.0, float("inf"), -float("inf"), 1e-41])
    g = torch.randn(x.shape, generator=gen)
    x = x.contiguous(memory_format=layout)
    other = torch.contiguous_format if layout == torch.channels_last else torch.channels_last
    g = g.contiguous(memory_format=layout if grad_layout == "same" else other)
    w = torch.linspace(-0.6, 1.4, 16)
    results = []
    for fn in (op, _PReLUFunction.apply):
        xi, wi = x.detach().clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
        y = fn(xi, wi)
        grads = torch.autograd.grad(y, [t for t, need in zip((xi, wi), needs, strict=True) if need], g)
        results.append([y, *grads])
    assert len(results[0]) == 1 + sum(needs)
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape
        assert torch.equal(_bits(a), _bits(b))
    assert results[0][0].is_contiguous(memory_format=layout)  # the output in the input's layout
    assert float(results[0][-1].nan_to_num().abs().max()) > 0  # (the infinities make a NaN or two)


@needs_op
def test_the_operator_runs_the_c_kernels_not_torchs_fallback(built_library):
    """Without the kernels' addresses it would still give torch's bits, through torch's operators: slower."""
    import ctypes

    library = ctypes.CDLL(str(built_library))  # the handle torch opened
    assert library.napari_sizeloss_kernels_ready() == 1


@needs_op
def test_the_module_hands_the_operator_only_what_it_takes():
    _op()
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    assert "PReLUFunction" in PReLU(6)(x).grad_fn.name()
    assert PReLU(1)(x).grad_fn.name() == "_PReLUFunctionBackward"  # one shared slope
    assert PReLU(6).double()(x.double()).grad_fn.name() == "_PReLUFunctionBackward"  # float64
    with torch.no_grad():  # prediction keeps the in-place kernel
        assert PReLU(6)(x.detach()).grad_fn is None
    with native_op.enabled(False):
        assert PReLU(6)(x).grad_fn.name() == "_PReLUFunctionBackward"


@needs_op
def test_double_backward_is_refused_not_silently_wrong():
    op = _op()
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    w = torch.rand(4, requires_grad=True)
    (gx,) = torch.autograd.grad(op(x, w).sum(), x)  # first order: fine
    assert gx.shape == x.shape
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(op(x, w).sum(), x, create_graph=True)


@needs_op
@pytest.mark.parametrize("channels_last", [True, False])
def test_enet_training_step_is_the_same_to_the_bit_through_the_operator(channels_last, monkeypatch):
    """Forward (dropout on), loss, gradients, batch-norm statistics and Adam's step, with and without it."""
    op = _op()
    torch.set_num_threads(2)
    calls = []

    def counted(x, w):
        calls.append(x.shape)
        return op(x, w)

    x = torch.randn(2, 1, 40, 48)
    target = torch.randint(0, 2, (2, 40, 48))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = {}
    monkeypatch.setattr(native_op, "BN_PRELU", None)  # batch norms apart: every PReLU through the operator
    monkeypatch.setattr(native_op, "SUM_PRELU", None)  # and bottleneck ends apart (tests/test_fused_ends.py)
    for use in (True, False):
        monkeypatch.setattr(native_op, "OP", counted if use else None)
        torch.manual_seed(11)
        model = ENet(in_channels=1, num_classes=2).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, target)
            loss.backward()
            opt.step()
        results[use] = [logits.detach(), loss.detach()] + [p.grad for p in model.parameters()] + list(
            model.state_dict().values())
    prelus = sum(isinstance(m, PReLU) for m in model.modules())
    assert len(calls) == 2 * prelus  # every PReLU of both steps went through the operator
    for a, b in zip(results[True], results[False], strict=True):
        assert torch.equal(_bits(a.float()), _bits(b.float()))


@needs_op
def test_the_self_test_refuses_a_wrong_operator():
    _op()

    class WrongSlopeGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return torch.prelu(x, w)

        @staticmethod
        def backward(ctx, grad):
            x, w = ctx.saved_tensors
            grad_pos = torch.ops.aten.threshold_backward.default(grad, x, 0)
            grad_neg = grad - grad_pos
            return torch.addcmul(grad_pos, grad_neg, w.view(1, -1, 1, 1)), (grad * x).sum((0, 2, 3))

    with pytest.raises(RuntimeError, match="backward differs"):
        native_op._self_test(WrongSlopeGradient.apply)
    with pytest.raises(RuntimeError, match="differs from torch.prelu"):
        native_op._self_test(lambda x, w: torch.prelu(x, w * 1.001))
    native_op._self_test(native_op.OP)  # and passes the real one


def test_switched_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv(native_prelu.ENV_SWITCH, "0")
    assert native_op.wait(timeout=5) is False
    assert native_op.status() == "off (NAPARI_SIZELOSS_NATIVE=0)"
    assert not fresh.exists()


def test_no_cxx_compiler_means_the_python_function(fresh, monkeypatch):
    monkeypatch.setattr(native_op, "_compiler", lambda: None)
    assert native_op.wait(timeout=5) is False
    assert native_op.status().startswith("unavailable (no C++ compiler")
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    assert PReLU(4)(x).grad_fn.name() == "_PReLUFunctionBackward"


def test_without_the_c_kernels_it_is_not_built(fresh, monkeypatch):
    monkeypatch.setattr(native_prelu, "load", lambda: None)
    assert native_op.wait(timeout=5) is False
    assert native_op.status().startswith("unavailable (the C kernels are not in use")


@needs_op
def test_missing_torch_headers_are_one_line(fresh, monkeypatch):
    def missing():
        raise FileNotFoundError("torch's C++ headers are not installed")

    monkeypatch.setattr(native_op, "_torch_paths", missing)
    assert native_op.wait(timeout=5) is False
    assert native_op.status() == "unavailable (FileNotFoundError: torch's C++ headers are not installed)"


@needs_op
def test_a_failing_compiler_is_one_line_and_leaves_no_library(fresh, monkeypatch, tmp_path):
    broken = tmp_path / "brokencxx"
    broken.write_text('#!/bin/sh\ncase "$1" in --version) echo "brokencxx 1.0"; exit 0;; esac\n'
                      "echo 'op.cpp:1:1: error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    assert native_op.wait(timeout=60) is False
    assert native_op.status() == "unavailable (brokencxx failed: op.cpp:1:1: error: this compiler is broken)"
    left = sorted(p.name for p in fresh.iterdir())
    assert not [n for n in left if n.endswith((".so", ".part", ".cpp", ".lock"))], left  # the log (and C kernels)
    assert [n for n in left if n.startswith("prelu-op-") and n.endswith(".log")]


@pytest.fixture(scope="session")
def built_library():
    """The operator's library as this session built or found it in the user's cache."""
    _op()
    path = native_op._library_path(native_op._compiler())
    return path if path.is_file() else pytest.skip("no cached build to copy")


def _copying_compiler(tmp_path, built):
    """A stand-in C++ compiler that writes ``built`` to its ``-o`` path after a second."""
    fake = tmp_path / "fakecxx"
    fake.write_text('#!/bin/sh\ncase "$1" in --version) echo "fakecxx 1.0"; exit 0;; esac\n'
                    'for last; do :; done\nsleep 1\ncp "$REAL_LIBRARY" "$last"\n')  # the last argument is -o's
    fake.chmod(0o755)
    return fake


@needs_op
def test_a_cache_folder_that_cannot_be_made_builds_for_this_process_only(built_library, fresh, monkeypatch, tmp_path):
    built = built_library
    fake = _copying_compiler(tmp_path, built)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(native_prelu.CACHE_ENV, str(blocker))  # its "native" folder cannot be made
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("REAL_LIBRARY", str(built))
    before = set(os.listdir(tempfile.gettempdir()))
    assert native_op.wait(timeout=120), native_op.status()  # (the loaded library of the namespace is reused)
    assert native_op.status().startswith("in use (built in")
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("napari-sizeloss-op-")]


@needs_op
def test_a_build_in_progress_elsewhere_is_waited_for_not_repeated(built_library, fresh, monkeypatch, tmp_path):
    """Many processes starting at once (a cluster, several windows) run one compiler (0.9 GB), not one each."""
    never = tmp_path / "nevercxx"
    never.write_text('#!/bin/sh\ncase "$1" in --version) echo "nevercxx 1.0"; exit 0;; esac\n'
                     f'touch {tmp_path / "compiled"}\nexit 1\n')
    never.chmod(0o755)
    monkeypatch.setenv("CXX", str(never))
    target = native_op._library_path(str(never))
    target.parent.mkdir(parents=True)
    lock = target.parent / f".{target.stem}.lock"
    lock.write_text("")  # another process's build, just started
    native_op.start()
    deadline = time.monotonic() + 10
    while native_op.status() != "waiting for another process's build" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert native_op.status() == "waiting for another process's build"
    shutil.copy(built_library, target)  # that build lands
    lock.unlink()
    assert native_op.wait(timeout=30), native_op.status()
    assert native_op.status() == "in use (built by another process)"
    assert not (tmp_path / "compiled").exists()


@needs_op
def test_a_stale_build_lock_is_taken_over(built_library, fresh, monkeypatch, tmp_path):
    fake = _copying_compiler(tmp_path, built_library)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("REAL_LIBRARY", str(built_library))
    target = native_op._library_path(str(fake))
    target.parent.mkdir(parents=True)
    lock = target.parent / f".{target.stem}.lock"
    lock.write_text("")
    old = time.time() - native_op.STALE_BUILD_S - 60
    os.utime(lock, (old, old))  # a build that died an hour ago
    assert native_op.wait(timeout=60), native_op.status()
    assert native_op.status().startswith("in use (built in")
    assert target.is_file() and not lock.exists()


def _python(code: str, env: dict, timeout: float = 600) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_op
def test_a_background_build_lands_atomically_then_later_processes_load_it_from_the_cache(built_library, tmp_path):
    """The whole pipeline, with a stand-in compiler that writes the library this session built."""
    built = built_library
    fake = _copying_compiler(tmp_path, built)
    env = {"CXX": str(fake), "REAL_LIBRARY": str(built), native_prelu.CACHE_ENV: str(tmp_path / "cache")}
    first = _python("""
        import json, torch
        from napari_sizeloss import native_op
        native_op.start()
        during = native_op.status()
        ok = native_op.wait(timeout=120)
        print(json.dumps({"during": during, "ok": ok, "after": native_op.status()}))
    """, env)
    assert first["during"] == "building in the background (fakecxx)"
    assert first["ok"] is True and first["after"].startswith("in use (built in")
    folder = tmp_path / "cache" / "native"
    assert sorted(p.suffix for p in folder.glob("prelu-op-*")) == [".so"]  # no source or log left
    assert not list(folder.glob(".prelu-op-*"))  # nor a partial library or the build's lock
    second = _python("""
        import json
        from napari_sizeloss import native_op
        native_op.start()
        print(json.dumps({"status": native_op.status(), "thread": native_op._state["thread"] is not None}))
    """, env)
    assert second == {"status": "in use (cached)", "thread": False}


@needs_op
def test_a_corrupt_cached_library_is_dropped_not_loaded(tmp_path):
    env = {native_prelu.CACHE_ENV: str(tmp_path / "cache")}
    result = _python("""
        import json
        from napari_sizeloss import native_op, native_prelu
        native_prelu.load()
        target = native_op._library_path(native_op._compiler())
        target.write_bytes(b"not a shared library")
        native_op.start()
        print(json.dumps({"status": native_op.status(), "op": native_op.OP is not None,
                          "left": target.exists()}))
    """, env)
    assert result["status"].startswith("unavailable (it does not load:")
    assert result == {**result, "op": False, "left": False}  # deleted: the next process builds it again


@needs_op
def test_a_second_library_of_the_namespace_is_never_loaded(built_library, tmp_path):
    """torch aborts the process when two libraries register one namespace: the one loaded is reused."""
    built = built_library
    copy = tmp_path / "elsewhere"
    result = _python(f"""
        import json, os, shutil
        from napari_sizeloss import native_op, native_prelu
        native_op.wait(timeout=600)
        first = native_op.status()
        os.environ[native_prelu.CACHE_ENV] = {str(copy)!r}
        target = native_prelu.cache_dir() / {built.name!r}
        target.parent.mkdir(parents=True)
        shutil.copy({str(built)!r}, target)  # the same library under another path
        native_op._state.update(tried=False, thread=None)
        native_op.OP = None
        native_op.start()
        print(json.dumps({{"first": first, "second": native_op.status(), "op": native_op.OP is not None}}))
    """, {})
    assert result["first"].startswith("in use")
    assert result["second"] == "in use (cached)" and result["op"] is True
