"""Opt-in ``torch.compile`` for long runs: ENet's forward (and backward) as fused kernels.

In eager mode a 256x256 training step at batch 1 spends about half its time
in some 300 memory-bound elementwise operators (PReLU, batch norm, residual
adds, dropout) between the convolutions (``scripts/step_profile.py``).
TorchInductor fuses them into a few generated loops and keeps oneDNN's
convolutions; on the 2-core development machine that roughly halves the step
(1.5-1.9x in ``python scripts/compile_bench.py``; figures in ``docs/benchmarks.md``).

The price is compile time, paid again for every new input shape: on 2 CPU
cores 80-110 s the first time for a training step and about 17 s for
prediction, 3-11 s once inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``,
by default under the system's temporary folder) holds the graphs. So it is
off by default and meant for runs long enough to amortise it: ``reproduce``,
long ``train`` runs and scripts that predict many volumes.

On the CPU inductor needs a C++ compiler (``g++`` or ``$CXX``); on CUDA it
needs Triton (shipped with torch's CUDA wheels). :func:`compile_unavailable_reason`
says, before anything is compiled, why it cannot work here. If compiling
still fails at the first call, :class:`CompiledForward` warns once and runs
the eager model instead: the same computation, only slower (compiled and
eager runs differ by rounding, which grows over many training steps).

In a GUI, :func:`compile_ahead` compiles in a child process first: a compile
in napari's own process holds the interpreter lock for minutes and its
garbage collections freeze the window for up to a second at a time; loaded
from the cache the child filled, the in-process part takes seconds.

Shapes: whatever the wrapped model takes; nothing here changes them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .gc_scope import (
    collect_new_objects_only,  # re-exported: the compiled-load path uses it
)

__all__ = [
    "CompileUnavailable",
    "CompileFallbackWarning",
    "CompiledForward",
    "DEFAULT_BACKEND",
    "compile_unavailable_reason",
    "require_compile",
    "compiled_predictor",
    "CompileAheadError",
    "compile_ahead",
    "collect_new_objects_only",
]


#: ``torch.compile`` backend of :class:`CompiledForward` when none is given.
DEFAULT_BACKEND = "inductor"


class CompileUnavailable(RuntimeError):
    """``torch.compile`` cannot run on this machine or device (the message says why)."""


class CompileFallbackWarning(RuntimeWarning):
    """Compiling failed at run time; the eager model was used instead."""


class CompileAheadError(RuntimeError):
    """:func:`compile_ahead` could not compile in a child process (the message says why)."""


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on this machine (honouring ``$CXX``), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except Exception:  # private API moved: fall back to a PATH search
        return next((name for name in ("g++", "c++", "clang++") if shutil.which(name)), None)
    try:
        return get_cpp_compiler()
    except Exception:  # inductor found none (e.g. $CXX names a missing program)
        return None


def compile_unavailable_reason(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot be used on ``device`` here; None when it can.

    Checked without compiling anything (milliseconds): that torch supports
    compiling on this Python, a C++ compiler for the CPU, Triton for CUDA.
    """
    device = torch.device(device)
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python or platform"
    except Exception as exc:  # pragma: no cover - depends on the torch build
        return f"torch.compile is unavailable ({type(exc).__name__})"
    if device.type == "cpu":
        if _cpp_compiler() is None:
            return "torch.compile needs a C++ compiler on the CPU (g++ or $CXX); install one or drop --compile"
    elif device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile needs Triton on CUDA (pip install triton); drop --compile or install it"
    else:
        return f"torch.compile is not used on {device.type} by this tool; drop --compile"
    return None


def require_compile(device: torch.device | str) -> None:
    """Raise :class:`CompileUnavailable` (one line) when ``torch.compile`` cannot run on ``device``."""
    reason = compile_unavailable_reason(device)
    if reason is not None:
        raise CompileUnavailable(reason)


def _root_cause(exc: BaseException) -> str:
    """``"Type: first line"`` of the innermost cause (dynamo wraps a backend's error in its own)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        exc = inner
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class CompiledForward:
    """``model(x)`` through ``torch.compile``, falling back to the eager model if compiling fails.

    Parameters
    ----------
    model : nn.Module
        Called as ``model(x)``; its parameters stay shared, so an optimiser
        built on ``model.parameters()`` trains the compiled forward too, and
        checkpoints save ``model`` itself.
    backend : str or callable, optional
        ``torch.compile`` backend; None: :data:`DEFAULT_BACKEND` (inductor).
    options : dict, optional
        Inductor options, e.g. ``{"freezing": True}`` for a model whose
        weights will not change again.

    Shapes are fixed per compiled graph (``dynamic=False``): each new input
    shape compiles once more (ENet's crops and whole slices keep one shape
    per run), up to torch's recompile limit, after which torch runs eagerly.
    Creating one tunes glibc's allocator (:func:`~napari_sizeloss.allocator.tune_allocator`):
    after a compile the heap is fragmented and, with glibc's defaults, the
    compiled steps ran 66-74 ms instead of 60-62 (256x256, batch 1, three
    alternating pairs of fresh processes on 2 cores).

    If a compiled call raises and the eager call with the same input works,
    a :class:`CompileFallbackWarning` is issued once and every later call is
    eager; if the eager call raises too, its error propagates.
    """

    def __init__(self, model: nn.Module, *, backend: str | Callable | None = None, options: dict | None = None) -> None:
        from .allocator import tune_allocator

        tune_allocator()
        self.model = model
        self.backend = DEFAULT_BACKEND if backend is None else backend
        self.failure: str | None = None
        self.calls = 0
        self.shapes: set[tuple[int, ...]] = set()  # input shapes called with (each compiled once)
        self._compiled: Callable = torch.compile(model, backend=self.backend, options=options, dynamic=False)

    @property
    def compiled(self) -> bool:
        """False once compiling has failed and calls go to the eager model."""
        return self.failure is None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.shapes.add(tuple(x.shape))
        if self.failure is not None:
            return self.model(x)
        try:
            return self._compiled(x)
        except Exception as exc:
            out = self.model(x)  # the eager model's own error, if any, propagates from here
            self.failure = _root_cause(exc)
            warnings.warn(
                f"torch.compile failed ({self.failure[:200]}); continuing with the eager model",
                CompileFallbackWarning,
                stacklevel=2,
            )
            return out


def compiled_predictor(model: nn.Module) -> CompiledForward:
    """A compiled copy of ``model`` for prediction: batch norms folded (:func:`~napari_sizeloss.inference.fold_batch_norms`).

    The copy holds the weights as they are now; ``model`` is left as it was.
    Pass it as ``forward`` to :func:`~napari_sizeloss.trainer.predict_volume`,
    which then feeds it one batch shape per in-plane size.
    """
    from .inference import fold_batch_norms

    # contiguous, as predict_volume feeds a compiled forward (and as it was measured)
    return CompiledForward(fold_batch_norms(model).to(memory_format=torch.contiguous_format))


def compile_ahead(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    backend: str | None = None,
    grad: bool = True,
    cancel: Callable[[], bool] | None = None,
) -> float | None:
    """Compile ``model`` for inputs of ``input_shape`` in a child Python process; returns its seconds.

    The child builds the same architecture (``type(model)(**model.config)``,
    in ``model``'s training mode, float32 on the CPU), runs one compiled
    forward pass (and, with ``grad``, a backward pass) on zeros of
    ``input_shape`` and exits. That fills inductor's on-disk cache, so the
    first compiled call of ``model`` itself then loads the kernels instead of
    generating them: seconds instead of 1-2 minutes spent in this process,
    where the compile holds the interpreter lock and, in napari, freezes the
    window for up to a second at a time (its garbage collections run over
    millions of compile objects). Weights do not matter: they are inputs of
    the compiled graphs.

    Parameters
    ----------
    model : nn.Module
        Must have a ``config`` dict of constructor keyword arguments (as
        :class:`~napari_sizeloss.network.ENet`) and live on the CPU.
    input_shape : (B, C, H, W)
        The shape the caller will call the compiled model with.
    backend : str, optional
        ``torch.compile`` backend name; None: :data:`DEFAULT_BACKEND`.
    grad : bool
        Compile the backward pass too (training).
    cancel : callable, optional
        Polled every 0.1 s; when it returns True the child is killed and
        None is returned.

    Returns
    -------
    float or None
        The child's seconds; 0.0 when it was skipped because this
        architecture, shape and torch compiled ahead before into the same
        inductor cache (a marker file there says so); None when cancelled.

    Raises
    ------
    CompileAheadError
        The model cannot be rebuilt in a child, or the child failed (one line).
    """
    backend = DEFAULT_BACKEND if backend is None else backend
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise CompileAheadError(f"{type(model).__name__} has no config to rebuild it in a child process")
    if not isinstance(backend, str):
        raise CompileAheadError("a child process can only use a backend given by name")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise CompileAheadError("compiling ahead is for models on the CPU")
    spec = {
        "factory": f"{type(model).__module__}:{type(model).__qualname__}",
        "config": config,
        "shape": [int(n) for n in input_shape],
        "training": bool(model.training),
        "grad": bool(grad),
        "backend": backend,
        "threads": torch.get_num_threads(),
    }
    try:
        payload = json.dumps({**spec, "parent": os.getpid()})
    except (TypeError, ValueError) as exc:
        raise CompileAheadError(f"{type(model).__name__}'s config cannot be passed to a child process: {exc}") from exc
    marker = _ahead_marker(spec)
    if marker is not None and marker.exists():
        return 0.0  # compiled ahead before with this torch: inductor's cache holds it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the modules this process imports
    if marker is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(marker.parent.parent)
    start = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "napari_sizeloss._compile_child", payload],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        except (OSError, ValueError) as exc:  # no usable interpreter (an embedded Python, say)
            raise CompileAheadError(f"cannot start a child Python ({sys.executable!r}): {exc}") from exc
        try:
            while child.poll() is None:
                if cancel is not None and cancel():
                    child.kill()
                    child.wait()
                    return None
                try:
                    child.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            child.kill()
            child.wait()
            raise
        if child.returncode != 0:
            log.seek(0)
            lines = [line.strip() for line in log.read().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {child.returncode}"
            raise CompileAheadError(f"compiling in a child process failed: {reason[:300]}")
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(payload)
        except OSError:
            pass  # no marker: the next call compiles ahead again (from the cache: seconds)
    return time.perf_counter() - start


def _ahead_marker(spec: dict):
    """``<inductor cache>/napari-sizeloss-ahead/<hash>.json``: written once ``spec`` was compiled ahead.

    The hash covers the spec, torch's and Python's versions and the machine's
    architecture; the marker lives inside inductor's cache folder, so
    clearing that cache clears it too. None when inductor's cache folder is
    unknown (the child then always runs).
    """
    import hashlib
    import platform
    from pathlib import Path

    if spec["backend"] != "inductor":
        return None  # other backends keep no on-disk cache
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        root = Path(cache_dir())
    except Exception:  # private API moved, or the folder cannot be made
        return None
    key = json.dumps([spec, torch.__version__, sys.version, platform.machine()], sort_keys=True)
    return root / "napari-sizeloss-ahead" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
