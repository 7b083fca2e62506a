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

Shapes: whatever the wrapped model takes; nothing here changes them.
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "CompileUnavailable",
    "CompileFallbackWarning",
    "CompiledForward",
    "DEFAULT_BACKEND",
    "compile_unavailable_reason",
    "require_compile",
    "compiled_predictor",
]


#: ``torch.compile`` backend of :class:`CompiledForward` when none is given.
DEFAULT_BACKEND = "inductor"


class CompileUnavailable(RuntimeError):
    """``torch.compile`` cannot run on this machine or device (the message says why)."""


class CompileFallbackWarning(RuntimeWarning):
    """Compiling failed at run time; the eager model was used instead."""


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
        self._compiled: Callable = torch.compile(model, backend=self.backend, options=options, dynamic=False)

    @property
    def compiled(self) -> bool:
        """False once compiling has failed and calls go to the eager model."""
        return self.failure is None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
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

    return CompiledForward(fold_batch_norms(model))
