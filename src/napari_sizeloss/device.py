"""Choosing where torch runs: device selection, mixed precision, memory format, threads.

One helper for the whole project (trainer, CLI, widget, benchmarks):
``"auto"`` prefers CUDA, then Apple's MPS, then the CPU; an explicit name is
honoured or refused with a :class:`DeviceError` that says what is available.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = [
    "DeviceError",
    "select_device",
    "available_devices",
    "autocast",
    "autocast_dtype",
    "uses_channels_last",
    "to_channels_last",
    "is_channels_last",
    "configure_threads",
    "match_state_layouts",
]

_DEVICE_NAME = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")


class DeviceError(ValueError):
    """A requested device is unknown or not available on this machine."""


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Names of the devices torch can use here, in the order ``"auto"`` prefers them.

    Returns
    -------
    list of str
        ``"cuda"`` (one GPU) or ``"cuda:0"``, ``"cuda:1"``, ... (several),
        then ``"mps"`` when available, then always ``"cpu"``. Every name is
        accepted by :func:`select_device`.
    """
    n_cuda = _cuda_count()
    names = ["cuda"] if n_cuda == 1 else [f"cuda:{i}" for i in range(n_cuda)]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """The torch device for a user's choice.

    Parameters
    ----------
    preference : str or torch.device
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or ``"mps"``; case and surrounding spaces are ignored.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        For an unknown name or a device this machine does not have, e.g.
        ``device 'cuda' requested but CUDA is not available; available: cpu``.
    """
    name = str(preference).strip().lower()
    if name == "auto":
        if _cuda_count():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = ", ".join(available_devices())
    match = _DEVICE_NAME.match(name)
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise DeviceError(
            f"unknown device {str(preference)!r}; choose auto, cpu, cuda, cuda:N or mps; available: {available}"
        )
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise DeviceError(f"device 'mps' requested but MPS is not available; available: {available}")
        return torch.device("mps")
    n_cuda = _cuda_count()
    if n_cuda == 0:
        raise DeviceError(f"device {name!r} requested but CUDA is not available; available: {available}")
    if index is None:
        return torch.device("cuda")
    if int(index) >= n_cuda:
        raise DeviceError(
            f"device {name!r} requested but only {n_cuda} CUDA device(s) are visible; available: {available}"
        )
    return torch.device("cuda", int(index))


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def autocast_dtype(
    device: torch.device | str,
    enabled: bool = True,
    dtype: torch.dtype | None = None,
    prefer_bf16: bool = True,
) -> torch.dtype | None:
    """The reduced precision :func:`autocast` uses on ``device``, or None for full float32.

    On CUDA: ``dtype`` when given, else bfloat16 when the GPU supports it and
    ``prefer_bf16``, else float16 (which needs a gradient scaler when
    training). Elsewhere: ``dtype`` (None unless given explicitly).
    """
    if not enabled:
        return None
    device = _as_device(device)
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if prefer_bf16 and torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(
    device: torch.device | str,
    enabled: bool = True,
    dtype: torch.dtype | None = None,
    prefer_bf16: bool = True,
) -> AbstractContextManager:
    """Mixed-precision context for a forward pass on ``device``.

    Parameters
    ----------
    device : torch.device or str
    enabled : bool
        False gives a no-op context.
    dtype : torch.dtype, optional
        Force this precision (also on CPU and MPS, where autocast is otherwise off).
    prefer_bf16 : bool
        On CUDA without ``dtype``: bfloat16 when supported, else float16.

    Returns
    -------
    context manager
        ``torch.autocast`` on CUDA (or with an explicit ``dtype``); a
        ``nullcontext`` on CPU and MPS by default: their float32 is exact and
        reduced precision there rarely pays off for this small network.
    """
    chosen = autocast_dtype(device, enabled=enabled, dtype=dtype, prefer_bf16=prefer_bf16)
    if chosen is None:
        return nullcontext()
    return torch.autocast(_as_device(device).type, dtype=chosen)


def uses_channels_last(device: torch.device | str) -> bool:
    """Whether the channels-last memory format pays off on ``device`` (eager).

    CUDA (tensor cores) and the CPU, where oneDNN's convolutions and
    max-pooling run faster on channels-last activations: a 256x256x10x25
    cine predicted in 4.2 s instead of 5.6 s, and an ENet training step
    about a tenth faster, on 2 cores (alternating runs; ``docs/benchmarks.md``).
    """
    return _as_device(device).type in ("cuda", "cpu")


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) laid out channels-last, also when ``C == 1``.

    ``x.contiguous(memory_format=torch.channels_last)`` returns a
    one-channel image batch unchanged: its strides already count as
    channels-last, so convolutions that follow see an NCHW input and the
    network runs with its activations in mixed layouts. ``Tensor.to`` with
    a memory format restrides it; a tensor already laid out so is returned
    as it is.
    """
    return x.to(memory_format=torch.channels_last)


def is_channels_last(model: torch.nn.Module) -> bool:
    """Whether ``model``'s convolution weights are laid out channels-last.

    Judged on its first 4-D parameter with more than one input channel and
    a kernel larger than 1x1 (a ``(out, 1, k, k)`` or 1x1 weight has the
    same strides in both layouts). False when there is none.
    """
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
    return False


def configure_threads(n: int | None) -> int:
    """Set torch's intra-op CPU threads.

    Parameters
    ----------
    n : int or None
        Threads to use (>= 1); None leaves the current setting.

    Returns
    -------
    int
        The number of intra-op threads now in effect.
    """
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DeviceError(f"threads must be a whole number >= 1, got {n!r}")
        torch.set_num_threads(n)
    return torch.get_num_threads()


def make_adam(params, lr: float, device: torch.device | str = "cpu") -> torch.optim.Adam:
    """Adam, fused into one kernel call over flat buffers where torch supports it (CPU and CUDA).

    On 2 CPU cores torch's fused update costs about 3.6 ms per ENet step
    instead of about 17 ms for the per-parameter loop, and
    :class:`~napari_sizeloss.flat_adam.FlatAdam` (the same kernel once over
    flat buffers) about 0.5-0.8 ms (``python scripts/adam_bench.py``). The
    arithmetic is Adam's in every case; the fused kernels' rounding differs
    only in the last bits. Make it after moving the model to its device and
    memory format (FlatAdam moves the parameters' values into its buffer).
    """
    params = list(params)
    if _as_device(device).type in ("cpu", "cuda"):
        from .flat_adam import FlatAdam

        try:
            return FlatAdam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass  # an older torch or a parameter dtype the fused kernel lacks
    return torch.optim.Adam(params, lr=lr)


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Lay each per-parameter state tensor out like its parameter, in place.

    A checkpoint stores Adam's moments contiguous; loaded into an optimiser
    whose parameters are channels-last, torch's fused Adam would pair
    elements by memory order, not by index, and silently corrupt every
    update of those parameters. Copies only the tensors whose strides
    differ from their parameter's.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
