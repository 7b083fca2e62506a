"""Inference-only copies of a network: batch normalisation folded into convolutions.

In evaluation mode a :class:`~torch.nn.BatchNorm2d` that directly follows a
convolution is an affine map per output channel,
``y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta``, so it can be
multiplied into the convolution's weights and bias. The folded copy computes
the same logits (float32 rounding apart) with one memory pass fewer per
folded layer: 83 of ENet's 84 batch norms fold (the initial block's follows a
concatenation with a max-pool and stays). With the allocator tuned
(:mod:`napari_sizeloss.allocator`) that cuts whole-slice prediction on 2 CPU
cores by about a fifth (``python scripts/alloc_bench.py``, see
``docs/benchmarks.md``).

The original model is never modified: training goes on with its batch norms.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from .device import is_channels_last

__all__ = ["fold_batch_norms", "count_batch_norms", "inference_model", "FOLD_MIN_PIXELS"]


def _execution_order(seq: nn.Sequential) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """Leaves of nested Sequentials, in the order they run: ``(parent, name, module)``."""
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            yield from _execution_order(child)
        else:
            yield seq, name, child


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(norm, nn.BatchNorm2d) or not norm.track_running_stats or norm.running_var is None:
        return False
    if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or conv.groups != 1:
        return False
    return conv.out_channels == norm.num_features


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(norm.running_var.float() + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.float()
    shift = -norm.running_mean.float() * scale
    if norm.affine:
        shift = shift + norm.bias.float()
    # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights (in, out, kh, kw).
    shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    weight = conv.weight.float() * scale.view(shape)
    bias = shift if conv.bias is None else conv.bias.float() * scale + shift
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def count_batch_norms(model: nn.Module) -> int:
    """Number of :class:`~torch.nn.BatchNorm2d` layers in ``model``."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An evaluation-mode copy of ``model`` with batch norms folded into the convolutions before them.

    A batch norm is folded when, within a (possibly nested)
    :class:`~torch.nn.Sequential`, it runs right after a ``Conv2d`` or
    ``ConvTranspose2d`` with ``groups=1`` and the same number of channels;
    it is then replaced by :class:`~torch.nn.Identity`. Every other layer is
    copied unchanged.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; it is deep-copied and left as it was (weights, mode).

    Returns
    -------
    torch.nn.Module
        The copy, in evaluation mode, on ``model``'s device, parameters
        without gradients. Use it for inference only: training it would
        train the folded parameters, not batch norms.
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(_execution_order(module))
        for (_, _, conv), (parent, name, norm) in zip(layers, layers[1:]):
            if _foldable(conv, norm):
                _fold_pair(conv, norm)
                setattr(parent, name, nn.Identity())
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


#: Fold only when a prediction covers at least this many pixels: folding
#: copies the model (about 40 ms on 2 CPU cores), which a few slices do not repay.
FOLD_MIN_PIXELS = 2**21

_cache_lock = threading.Lock()
#: model -> (its parameters and buffers when folded, {channels_last: folded copy})
_cache: "weakref.WeakKeyDictionary[nn.Module, tuple[list[torch.Tensor], dict[bool, nn.Module]]]" = (
    weakref.WeakKeyDictionary()
)


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in (*model.parameters(), *model.buffers())]


def _unchanged(snapshot: list[torch.Tensor], model: nn.Module) -> bool:
    """Whether every parameter and buffer of ``model`` still equals ``snapshot``, exactly.

    Compares values, not version counters: torch's fused Adam and writes
    through ``.data`` change weights without bumping them.
    """
    state = _state(model)
    if len(state) != len(snapshot):
        return False
    for now, then in zip(state, snapshot):
        if now.device != then.device or now.dtype != then.dtype or now.shape != then.shape:
            return False
        if not torch.equal(now, then):
            return False
    return True


def inference_model(model: nn.Module, pixels: int, *, channels_last: bool | None = None) -> nn.Module:
    """The model to run for a prediction covering ``pixels`` pixels.

    A batch-norm-folded copy (:func:`fold_batch_norms`) when ``pixels`` is at
    least :data:`FOLD_MIN_PIXELS`, reused for as long as ``model``'s
    parameters and buffers are unchanged (compared value by value, about
    1 ms); otherwise ``model`` itself, switched to evaluation mode.

    ``channels_last``: lay the folded copy's weights out channels-last
    (True) or contiguous (False); None keeps ``model``'s layout. ``model``
    itself is never converted: feed it inputs in its own layout
    (:func:`~napari_sizeloss.device.is_channels_last`).
    """
    if pixels < FOLD_MIN_PIXELS or count_batch_norms(model) == 0:
        return model.eval()
    if channels_last is None:
        channels_last = is_channels_last(model)
    with _cache_lock:
        cached = _cache.get(model)
    if cached is None or not _unchanged(cached[0], model):
        cached = ([t.clone() for t in _state(model)], {})
    folded = cached[1].get(channels_last)
    if folded is None:
        folded = fold_batch_norms(model)
        folded.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        cached[1][channels_last] = folded
    with _cache_lock:
        _cache[model] = cached
    return folded
