"""Safe model checkpoints: one file with weights, optimiser state and what is needed to reuse them.

A checkpoint is a :func:`torch.save` file holding only tensors and plain
containers (dict, list, tuple, str, int, float, bool, None), so that
``torch.load(path, weights_only=True)`` reads it without unpickling any
object that could run code. Its layout (format version 1)::

    {
        "format": "napari-sizeloss-checkpoint",
        "version": 1,
        "model": {"name": "ENet", "config": {...}},   # ENet(**config) rebuilds it
        "state_dict": {name: Tensor},                  # on the CPU, contiguous
        "weights_sha256": str,                         # checksum of the weights
        "optimizer_state": dict | None,                # optimizer.state_dict()
        "normalisation": {str: float} | None,          # intensity normalisation
        "bounds": dict | None,                         # size bounds, plain values
        "metadata": dict,                              # free plain values
    }

:func:`load_checkpoint` always loads with ``weights_only=True`` and refuses,
with a one-line :class:`CheckpointError`, anything that is not such a file:
a pickle that would import a callable (refused before anything in it runs),
a truncated or corrupt file, a bare ``state_dict``, another format version.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import publish_atomically
from .network import ENet

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "build_model",
]

#: Format tag stored in every checkpoint.
FORMAT = "napari-sizeloss-checkpoint"

#: Version of the layout written by :func:`save_checkpoint`.
FORMAT_VERSION = 1

#: Architectures a checkpoint may name, with their constructor keywords.
_MODELS = {"ENet": ENet}
_ENET_KEYS = ("in_channels", "num_classes", "dropout_initial", "dropout")


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read, or does not fit its model."""


@dataclass
class Checkpoint:
    """The content of a checkpoint file.

    Attributes
    ----------
    model_config : dict
        ``ENet`` constructor keywords (``in_channels``, ``num_classes``,
        ``dropout_initial``, ``dropout``).
    state_dict : dict of str -> Tensor
        Model weights and batch-norm statistics (on ``map_location``).
    optimizer_state : dict or None
        ``optimizer.state_dict()`` (e.g. Adam's moments and step counts).
    normalisation : dict of str -> float or None
        Intensity normalisation of the training volume (e.g. ``{"low", "high"}``).
    bounds : dict or None
        Size bounds used in training, plain values.
    metadata : dict
        Free plain values (training settings, region of interest, ...).
    source : str or None
        The file it was loaded from (for messages).
    """

    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    normalisation: dict[str, float] | None = None
    bounds: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


# ---------------------------------------------------------------- plain values
def _plain(value: Any, where: str) -> Any:
    """``value`` as plain Python (numpy scalars and arrays converted), or CheckpointError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return _plain(value.item(), where)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where} has a non-string key {key!r}; checkpoints store string keys only")
            out[key] = _plain(v, f"{where}[{key!r}]")
        return out
    raise CheckpointError(
        f"{where} holds a {type(value).__name__}; checkpoints store only numbers, strings, "
        "booleans, None, lists and dicts"
    )


def _plain_dict(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} must be a dict, got {type(value).__name__}")
    return _plain(value, where)


def _normalisation(value: Any, where: str) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} must be a dict of numbers, got {type(value).__name__}")
    out = {}
    for key, v in value.items():
        v = v.item() if isinstance(v, np.generic) else v
        if not isinstance(key, str) or isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise CheckpointError(f"{where} must map names to numbers, got {key!r}: {v!r}")
        if not math.isfinite(float(v)):
            raise CheckpointError(f"{where}[{key!r}] must be finite, got {v!r}")
        out[key] = float(v)
    return out


def _to_cpu(obj: Any) -> Any:
    """Tensors (nested in dicts, lists, tuples) moved to the CPU, detached, contiguous and compact.

    Compact: a view into a larger buffer (FlatAdam's parameters and moments
    are) is copied out, so the file holds each tensor's own elements only.
    """
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().to("cpu").contiguous()
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        return tensor
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- saving
def save_checkpoint(
    path: str | os.PathLike,
    model: ENet,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    normalisation: dict[str, float] | None = None,
    bounds: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and what is needed to reuse it) to one safe checkpoint file.

    The file is written to a hidden temporary file in the destination folder,
    checked by reading it back as :func:`load_checkpoint` would, then renamed
    over ``path`` with :func:`os.replace`: an existing file at ``path`` is
    replaced whole or not at all, and no temporary file is left on error.

    Parameters
    ----------
    path : str or PathLike
        Destination file (conventionally ``*.ckpt``).
    model : ENet
        Its ``config`` and ``state_dict()`` are stored (tensors moved to the CPU).
    optimizer : torch.optim.Optimizer, optional
        Its ``state_dict()`` is stored (e.g. Adam's moments and step counts).
    normalisation : dict of str -> float, optional
        Intensity normalisation (e.g. ``{"low": ..., "high": ...}``, raw intensity units).
    bounds : dict, optional
        Size bounds, plain values (numbers, strings, lists, dicts; numpy converted).
    metadata : dict, optional
        Free plain values, the same kinds as ``bounds``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    CheckpointError
        ``path`` is a directory, its folder is missing or not writable, a value
        cannot be stored safely, or writing fails.
    """
    path = Path(path)
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: store the plain one
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"expected an ENet (with a .config dict), got {type(model).__name__}")
    state_dict = _to_cpu(dict(model.state_dict()))
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": {"name": type(model).__name__, "config": _plain(dict(config), "model config")},
        "state_dict": state_dict,
        "weights_sha256": _weights_sha256(state_dict),
        "optimizer_state": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "normalisation": _normalisation(normalisation, "normalisation"),
        "bounds": _plain_dict(bounds, "bounds"),
        "metadata": _plain_dict(metadata, "metadata") or {},
    }
    if payload["model"]["name"] not in _MODELS:
        raise TypeError(f"cannot store a {payload['model']['name']}; checkpoints hold one of {', '.join(_MODELS)}")
    _check_destination(path)
    _atomic_torch_save(payload, path)
    return path


def _check_destination(path: Path) -> None:
    name = str(path)
    if path.is_dir():
        raise CheckpointError(f"cannot save checkpoint {name}: it is a directory")
    parent = path.parent
    if not parent.exists():
        raise CheckpointError(f"cannot save checkpoint {name}: folder {parent} does not exist")
    if not parent.is_dir():
        raise CheckpointError(f"cannot save checkpoint {name}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot save checkpoint {name}: folder {parent} is not writable")


def _atomic_torch_save(payload: dict, path: Path) -> None:
    name = str(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fobj:
            torch.save(payload, fobj)
        _read(tmp, "cpu", name)  # never publish a file that load_checkpoint would refuse

    try:
        publish_atomically(path, write)
    except CheckpointError:
        raise
    except PermissionError as exc:
        raise CheckpointError(f"cannot save checkpoint {name}: permission denied") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot save checkpoint {name}: {exc.strerror or _one_line(str(exc))}") from exc
    except (pickle.PicklingError, RuntimeError) as exc:
        raise CheckpointError(f"cannot save checkpoint {name}: {_one_line(str(exc))}") from exc


# ---------------------------------------------------------------- loading
_DISALLOWED_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, safely.

    Always ``torch.load(..., weights_only=True)``: a file that would need to
    import any callable (code execution in a hostile pickle) is refused before
    anything in it runs.

    Parameters
    ----------
    path : str or PathLike
    map_location : str or torch.device
        Where the tensors are placed (default the CPU).

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        Missing or unreadable file; not a torch file, truncated or corrupt;
        disallowed objects; not this format (e.g. a bare ``state_dict``);
        another format version; an invalid model config.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise CheckpointError(f"cannot load checkpoint {name}: file not found")
    if path.is_dir():
        raise CheckpointError(f"cannot load checkpoint {name}: it is a directory")
    return _read(path, map_location, name)


def _read(path: Path, map_location, name: str) -> Checkpoint:
    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch.save's format) makes torch warn about its protocol
            # before refusing it; the refusal below is the one line the user should see.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _DISALLOWED_GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(
                f"{name} is not a napari-sizeloss checkpoint: it contains disallowed objects "
                f"({found.group(1)}); refused without running them"
            ) from None
        raise CheckpointError(
            f"{name} is not a napari-sizeloss checkpoint: not a torch file, corrupt, or holding "
            "disallowed objects; refused without running anything"
        ) from None
    except PermissionError:
        raise CheckpointError(f"cannot load checkpoint {name}: permission denied") from None
    except EOFError:
        raise CheckpointError(f"{name} is not a napari-sizeloss checkpoint: the file is empty or truncated") from None
    except Exception as exc:  # truncated zip, garbage, bad storage records, ...
        raise CheckpointError(
            f"{name} is not a napari-sizeloss checkpoint: cannot read it as a torch file, it is "
            f"corrupt or truncated ({_one_line(f'{type(exc).__name__}: {exc}', 90)})"
        ) from None
    return _parse(raw, name)


def _parse(raw: Any, name: str) -> Checkpoint:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        what = "a bare state_dict" if _looks_like_state_dict(raw) else "no napari-sizeloss format tag"
        raise CheckpointError(f"{name} is not a napari-sizeloss checkpoint ({what})")
    version = raw.get("version")
    if version != FORMAT_VERSION:
        newer = " (written by a newer napari-sizeloss)" if isinstance(version, int) and version > FORMAT_VERSION else ""
        raise CheckpointError(
            f"{name} is napari-sizeloss checkpoint format version {version!r}{newer}; "
            f"this version reads format version {FORMAT_VERSION}"
        )
    model = raw.get("model")
    if not isinstance(model, dict) or model.get("name") not in _MODELS or not isinstance(model.get("config"), dict):
        raise CheckpointError(f"{name}: the checkpoint does not describe a known model (expected ENet)")
    config = _model_config(model["config"], name)
    state_dict = raw.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{name}: the checkpoint's weights are not a dict of named tensors")
    if raw.get("weights_sha256") != _weights_sha256(state_dict):
        raise CheckpointError(f"{name} is corrupt: its weights do not match their checksum")
    optimizer_state = raw.get("optimizer_state")
    if optimizer_state is not None and not isinstance(optimizer_state, dict):
        raise CheckpointError(f"{name}: the checkpoint's optimiser state is not a dict")
    try:
        normalisation = _normalisation(raw.get("normalisation"), "normalisation")
        bounds = _plain_dict(raw.get("bounds"), "bounds")
        metadata = _plain_dict(raw.get("metadata"), "metadata") or {}
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    return Checkpoint(
        model_config=config,
        state_dict=state_dict,
        optimizer_state=optimizer_state,
        normalisation=normalisation,
        bounds=bounds,
        metadata=metadata,
        source=name,
    )


def _looks_like_state_dict(raw: Any) -> bool:
    return isinstance(raw, dict) and bool(raw) and all(isinstance(v, torch.Tensor) for v in raw.values())


def _model_config(config: dict, name: str) -> dict[str, Any]:
    unknown = sorted(str(k) for k in config if k not in _ENET_KEYS)
    if unknown:
        raise CheckpointError(
            f"{name}: the model config has unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"ENet takes {', '.join(_ENET_KEYS)}"
        )
    for key in ("in_channels", "num_classes"):
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], int)):
            raise CheckpointError(f"{name}: the model config's {key} must be an integer, got {config[key]!r}")
    for key in ("dropout_initial", "dropout"):
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], (int, float))):
            raise CheckpointError(f"{name}: the model config's {key} must be a number, got {config[key]!r}")
    return dict(config)


# ---------------------------------------------------------------- rebuilding
def build_model(checkpoint: Checkpoint) -> ENet:
    """The network stored in ``checkpoint``, with its weights, in eval mode.

    Parameters
    ----------
    checkpoint : Checkpoint
        From :func:`load_checkpoint`.

    Returns
    -------
    ENet
        On the device of ``checkpoint.state_dict`` (the CPU by default);
        call ``.train()`` before training it further.

    Raises
    ------
    CheckpointError
        The config is invalid, or the weights do not fit it (e.g. weights for
        another number of classes than the config says).
    """
    name = checkpoint.source or "the checkpoint"
    try:
        model = ENet(**checkpoint.model_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: invalid model config: {_one_line(str(exc))}") from None
    problem = _mismatch(model, checkpoint.state_dict)
    if problem:
        raise CheckpointError(f"checkpoint {name} {problem}")
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval()


def _mismatch(model: ENet, state_dict: dict[str, torch.Tensor]) -> str | None:
    """Why ``state_dict`` does not fit ``model`` in one phrase, or None when it fits."""
    expected = model.state_dict()
    cfg = model.config
    classes = state_dict.get("fullconv.weight")
    channels = state_dict.get("initial.conv.weight")
    if isinstance(classes, torch.Tensor) and classes.dim() == 4 and classes.shape[1] != cfg["num_classes"]:
        return (
            f"is for a model with {classes.shape[1]} classes, but its config says "
            f"{cfg['num_classes']}; the file is inconsistent"
        )
    if isinstance(channels, torch.Tensor) and channels.dim() == 4 and channels.shape[1] != cfg["in_channels"]:
        return (
            f"is for a model with {channels.shape[1]} input channel(s), but its config says "
            f"{cfg['in_channels']}; the file is inconsistent"
        )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weight(s) missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        return "does not fit ENet: " + ", ".join(parts)
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            return (
                f"does not fit ENet: {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"the model needs {tuple(tensor.shape)}"
            )
    return None
