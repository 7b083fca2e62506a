"""ENet (Paszke et al. 2016) for 2D slices of any size.

Paszke, Chaurasia, Kim and Culurciello, "ENet: A deep neural network
architecture for real-time semantic segmentation", arXiv:1606.02147 (2016).
The paper that this plugin implements (Kervadec et al., "Constrained-CNN
losses for weakly supervised segmentation") trains this network.

Layout (Table 1 of the ENet paper), for an input of ``H x W`` pixels::

    initial        3x3/2 conv (16 - C_in ch) || 2x2 max-pool        16 x H/2
    stage 1        downsampling bottleneck 16 -> 64, 4 x regular    64 x H/4
    stage 2        downsampling 64 -> 128, then 8 bottlenecks      128 x H/8
    stage 3        the same 8 bottlenecks (no downsampling)        128 x H/8
    stage 4        upsampling 128 -> 64, 2 x regular                64 x H/4
    stage 5        upsampling 64 -> 16, 1 x regular                 16 x H/2
    fullconv       2x2/2 transposed conv to the classes    num_classes x H

The 8 bottlenecks of stages 2 and 3 are, in order: regular, dilated 2,
asymmetric 5 (5x1 then 1x5), dilated 4, regular, dilated 8, asymmetric 5,
dilated 16. Every bottleneck reduces to a quarter of its output channels
inside (``BOTTLENECK_RATIO``), uses batch normalisation and PReLU, and ends
its residual branch with spatial dropout (``nn.Dropout2d``): ``p=0.01`` in
stage 1, ``0.1`` later. The upsampling bottlenecks max-unpool with the indices
stored by the matching downsampling bottleneck.

The network's total stride is 8: :class:`ENet` pads any ``H x W`` input to
the next multiple of 8, at least 16 (replicate padding split evenly between
both sides, the extra pixel after) and crops the logits back, so that ``logits[..., i, j]``
is the prediction for input pixel ``(i, j)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import native_op, native_prelu

__all__ = ["ENet", "PReLU", "BNPReLU", "with_torch_prelu", "count_parameters", "STRIDE", "MIN_PADDED_SIDE",
           "BOTTLENECK_RATIO"]

#: Total downsampling factor: input sides are padded to a multiple of this.
STRIDE = 8

#: Smallest padded side (px): keeps 2x2 positions at 1/8 resolution, so that
#: batch normalisation has more than one value per channel even for a single
#: tiny image in training mode.
MIN_PADDED_SIDE = 16

#: Output channels / internal channels of every bottleneck.
BOTTLENECK_RATIO = 4


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
    trainable_only : bool
        Count only parameters with ``requires_grad``.

    Returns
    -------
    int
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


#: aten's ``threshold_backward(grad, x, 0)``: ``grad`` where ``x > 0``, else 0 (the overload itself:
#: resolving it through ``torch.ops.aten.threshold_backward`` costs Python time on every call).
_threshold_backward = torch.ops.aten.threshold_backward.default
#: Dtypes whose gradient sums need no wider accumulator.
_EXACT_SUM_DTYPES = (torch.float32, torch.float64)


class _PReLUFunction(torch.autograd.Function):
    """``torch.prelu`` with a backward pass built from fast elementwise kernels.

    torch 2.13's CPU kernel for PReLU's backward is about 30 times slower
    than its forward; ENet runs 109 PReLUs per step. Computing the same two
    gradients from a ReLU mask, a subtraction, a fused multiply-add and a
    reduction took one PReLU's forward and backward on a 64 x 64 x 64
    activation from 0.8-0.9 ms to 0.3-0.4 ms on 2 cores, and a 256 x 256
    training step from 140 to 124 ms (``python scripts/prelu_bench.py``).
    Since 2026-12-06 ENet's case (4-D float32/float64, one slope per channel,
    both gradients wanted) skips the general path's dtype and shape handling
    and reuses its temporary for the slope's gradient: 0.55 -> 0.36 ms on
    that activation, and the fixed cost of a step (``scripts/step_profile.py
    --size 16``) 37.8 -> 34.4 ms. Since 2026-12-07, for float32 on the CPU,
    the forward and that case's backward go through
    :mod:`napari_sizeloss.native_prelu`'s compiled kernels where available
    (one pass each, the same bits; training steps 5-8 % faster).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        y = native_prelu.prelu(x, weight)
        return torch.prelu(x, weight) if y is None else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        if ctx.needs_input_grad == (True, True) and (fused := native_prelu.prelu_backward(grad, x, weight)):
            # the same values as the short path below, in one pass (napari_sizeloss.native_prelu)
            grad_x, terms = fused
            return grad_x, terms.sum((0, 2, 3))
        grad_pos = _threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        grad_neg = grad - grad_pos  # grad where x <= 0, else 0
        if (
            x.dim() == 4
            and weight.numel() > 1
            and grad.dtype is x.dtype is weight.dtype
            and x.dtype in _EXACT_SUM_DTYPES
            and ctx.needs_input_grad == (True, True)
        ):
            # ENet's case in training, 109 times a step: the general path below costs about 30 us more
            # per call on a tiny activation and 50-240 us on ENet's (scripts/prelu_bench.py).
            grad_x = torch.addcmul(grad_pos, grad_neg, weight.view(1, -1, 1, 1))
            return grad_x, grad_neg.mul_(x).sum((0, 2, 3))
        channel_wise = weight.numel() > 1
        slope = weight.view(1, -1, *([1] * (x.dim() - 2))) if channel_wise else weight.reshape(())
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(grad_pos, grad_neg, slope.to(grad.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if d != 1] if channel_wise and x.dim() > 1 else list(range(x.dim()))
            accumulate = torch.promote_types(grad_neg.dtype, torch.float32)  # bf16/fp16 sums in fp32
            grad_w = (grad_neg * x).sum(dim=dims, dtype=accumulate).reshape(weight.shape).to(weight.dtype)
        return grad_x, grad_w


#: Whether torch.compile is tracing this call (``torch.compiler.is_compiling``, torch >= 2.3; looked up
#: once, as :meth:`PReLU.forward` runs 109 times a step).
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)
#: Whether torch.jit is tracing this call: a trace would not record the compiled kernel's write.
_tracing = torch.jit.is_tracing


class PReLU(nn.PReLU):
    """:class:`torch.nn.PReLU` (same parameters, same results), faster on the CPU.

    On the CPU, with gradients (training), it runs the C++ operator of
    :mod:`napari_sizeloss.native_op` once it is built (float32, one slope
    per channel; its first use starts the build in the background), else
    :class:`_PReLUFunction` (a faster backward pass than torch's; forward
    and backward through :mod:`napari_sizeloss.native_prelu`'s compiled
    kernels where they are available). Without gradients (prediction) it
    writes its result into its input when the kernel is available (whole-slice prediction 11-14 %
    faster): in ENet each PReLU reads a fresh activation that nothing else
    holds, so use it only where that is so. The values are the same to the
    bit on every path. On other devices, without gradients when the kernel
    is not available, while ``torch.jit`` traces, and under
    ``torch.compile`` (whose generated code fuses torch's PReLU and its
    backward with the neighbouring operators) it is ``nn.PReLU`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cpu or _compiling():
            return super().forward(x)
        if not torch.is_grad_enabled():
            if not _tracing() and native_prelu.prelu_(x, self.weight):
                return x
            return super().forward(x)
        op = native_op.OP
        if op is not None and x.dtype is torch.float32 and x.dim() == 4 and self.weight.dtype is torch.float32 \
                and self.num_parameters > 1 and not _tracing():
            return op(x, self.weight)  # the C++ operator (napari_sizeloss.native_op): the same bits, less Python
        if not native_op.started():
            native_op.start()  # builds it in the background the first time: the function below meanwhile
        return _PReLUFunction.apply(x, self.weight)


def with_torch_prelu(model: nn.Module) -> nn.Module:
    """Replace every :class:`PReLU` in ``model`` by a :class:`torch.nn.PReLU` with the same weights, in place.

    For comparisons against torch's own kernels (``scripts/prelu_bench.py``,
    the tests); the results are the same either way. Returns ``model``.
    """
    for name, child in model.named_children():
        if isinstance(child, PReLU):
            plain = nn.PReLU(child.num_parameters).to(child.weight.device, child.weight.dtype)
            with torch.no_grad():
                plain.weight.copy_(child.weight)
            setattr(model, name, plain)
        else:
            with_torch_prelu(child)
    return model


def _truly_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels-last and not also plain contiguous.

    A one-channel (or 1x1) tensor can count as both, and ``torch.cat`` of a
    channels-last tensor with such a one can make an NCHW result. A one-channel
    input made the usual way, ``x.contiguous(memory_format=torch.channels_last)``
    (a no-op on its strides), left the initial block's pooled copy so, and the
    trunk of a channels-last model then ran NCHW: each branch's convolution
    copied its input and each residual sum mixed layouts, a 256x256 training
    step about 1.27x slower (``scripts/layout_bench.py --only input``).
    """
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _residual_sum(branch: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
    """``main + branch``, written into ``branch`` and returned: a bottleneck's residual sum.

    ``branch`` is the fresh output of a bottleneck's branch (its last PReLU,
    or spatial dropout's product in training), which no backward pass saves,
    so autograd allows the in-place sum; ``main`` is cast to its dtype first
    (under autocast the branch may be in half precision), as ``main.to(dtype)
    + branch`` did, so the values are the same to the bit. Summing in place
    skips allocating and writing a fresh activation per bottleneck: whole-slice
    prediction 5-10 % faster on 2 CPU cores (``docs/benchmarks.md``).
    """
    return branch.add_(main.to(branch.dtype))


def _sum_and_activate(act: nn.PReLU, branch: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
    """A bottleneck's output, ``act(main + branch)``, written into ``branch`` and returned.

    ``main`` may have fewer channels than ``branch`` (a downsampling
    bottleneck's pooled input): it is added to the first ones, the rest being
    zero. In prediction on the CPU (no gradients, ``act`` this module's
    :class:`PReLU`) the sum and the activation are one pass of
    :func:`napari_sizeloss.native_prelu.add_prelu_` when it is available
    (the same values to the bit); otherwise :func:`_residual_sum` then ``act``.
    """
    if (
        not torch.is_grad_enabled()
        and type(act) is PReLU
        and not _compiling()
        and not _tracing()
        and native_prelu.add_prelu_(branch, main, act.weight)
    ):
        return branch
    _residual_sum(branch if main.shape[1] == branch.shape[1] else branch[:, : main.shape[1]], main)
    return act(branch)


def _ends_fused(act: nn.Module, x: torch.Tensor) -> bool:
    """Whether a bottleneck with input ``x`` and output activation ``act`` may end through
    :data:`napari_sizeloss.native_op.SUM_PRELU` (training on the CPU, once the operator is built); the
    branch's output is checked again in :func:`_fused_end`."""
    return (
        native_op.SUM_PRELU is not None
        and torch.is_grad_enabled()
        and type(act) is PReLU
        and x.is_cpu
        and not _compiling()
        and not _tracing()
    )


def _branch_before_dropout(branch: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, nn.Dropout2d | None]:
    """``branch(x)`` without its last module when that is spatial dropout: (output, the dropout module or None)."""
    *body, last = branch
    for module in body:
        x = module(x)
    if type(last) is nn.Dropout2d:
        return x, last
    return last(x), None


def _dropout_noise(drop: nn.Dropout2d | None, x: torch.Tensor) -> torch.Tensor | None:
    """The factor per image and channel ``drop(x)`` would multiply ``x`` by, ``(N, C, 1, 1)``, or None for none.

    Drawn as torch's spatial dropout draws it (``bernoulli_(1 - p)`` on an
    ``(N, C, 1, 1)`` tensor, then ``div_(1 - p)``), from the same generator in
    the same order: the same masks as ``nn.Dropout2d``.
    """
    if drop is None or not drop.training or drop.p == 0 or x.numel() == 0:
        return None
    shape = (x.shape[0], x.shape[1], 1, 1)
    if drop.p == 1:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    return torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - drop.p).div_(1 - drop.p)


def _end(act: PReLU, branch: nn.Sequential, x: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
    """A regular or downsampling bottleneck's ``act(main + branch(x))`` (``main`` may have fewer channels):
    :func:`_fused_end` where the operator applies, else the branch then :func:`_sum_and_activate`."""
    if _ends_fused(act, x):
        out, drop = _branch_before_dropout(branch, x)
        return _fused_end(act, out, main, drop)
    return _sum_and_activate(act, branch(x), main)


def _fused_end(act: PReLU, branch: torch.Tensor, main: torch.Tensor, drop: nn.Dropout2d | None) -> torch.Tensor:
    """A bottleneck's end in training, ``act(main + drop(branch))``, as one operator where it can be.

    :data:`napari_sizeloss.native_op.SUM_PRELU` for float32 channels-last
    tensors: the dropout's product, the residual sum and the PReLU in one
    pass forward and one backward, the same bits as the three operators in
    turn but for the slopes' gradient (summed in another order, within float
    rounding), and the same dropout masks; ``drop`` then
    :func:`_sum_and_activate` otherwise.
    """
    op = native_op.SUM_PRELU
    if (
        op is not None
        and branch.dtype is torch.float32
        and main.dtype is torch.float32
        and _truly_channels_last(branch)
        and main.dim() == 4
        and main.shape[1] <= branch.shape[1]
        and act.num_parameters == branch.shape[1]
        and act.weight.dtype is torch.float32
    ):
        return op(branch, main, act.weight, _dropout_noise(drop, branch))
    return _sum_and_activate(act, drop(branch) if drop is not None else branch, main)


def _spatial_dropout(p: float) -> nn.Dropout2d:
    """Spatial dropout (whole channels zeroed with probability ``p``) that scales its input in place.

    It follows a PReLU, whose output no backward pass saves, so autograd
    allows it; the masks and values are those of ``nn.Dropout2d(p)``. It
    skips a fresh activation per bottleneck in training: steps up to 3 %
    faster on 2 CPU cores. In evaluation mode it returns its input as is.
    """
    return nn.Dropout2d(p, inplace=True)


class BNPReLU(nn.Sequential):
    """Batch normalisation followed by a per-channel PReLU: ``nn.Sequential(nn.BatchNorm2d(C), PReLU(C))``.

    ``(B, C, H, W) -> (B, C, H, W)``. The same parameters, buffers and
    state-dict keys (``0.*``, ``1.*``) as that Sequential. In training on the
    CPU (gradients on, float32, channels-last) the pair runs as one C++
    operator, :data:`napari_sizeloss.native_op.BN_PRELU`, once built: one
    pass for the statistics' two sums, one for the normalised and activated
    output, two in the backward pass, with ``z`` recomputed from the input
    instead of two saved activations. Training steps 13-15 % faster on 2 CPU
    cores (``python scripts/native_op_bench.py --fused``); within float rounding of
    torch's ``batch_norm`` then ``prelu`` (its per-channel sums run in
    another order), not bit for bit. The running statistics and
    ``num_batches_tracked`` are updated as ``nn.BatchNorm2d`` updates them.
    Everywhere else (evaluation, prediction, other layouts or devices,
    ``torch.compile``, tracing, a replaced member) it is the Sequential.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = native_op.BN_PRELU
        if op is not None and torch.is_grad_enabled() and len(self) == 2:
            norm, act = self[0], self[1]
            if (
                norm.training  # (a batch norm frozen on its own, in evaluation mode, uses its running statistics)
                and type(norm) is nn.BatchNorm2d
                and type(act) is PReLU
                and norm.affine
                and norm.track_running_stats
                and norm.momentum is not None
                and x.is_cpu
                and x.dtype is torch.float32
                and _truly_channels_last(x)
                and norm.weight.dtype is torch.float32
                and act.weight.dtype is torch.float32
                and act.num_parameters == x.shape[1]
                and not _compiling()
                and not _tracing()
            ):
                norm.num_batches_tracked.add_(1)
                return op(x, norm.weight, norm.bias, act.weight, norm.running_mean, norm.running_var,
                          norm.momentum, norm.eps)
        return super().forward(x)


def _bn_prelu(channels: int) -> BNPReLU:
    """Batch normalisation followed by a per-channel PReLU."""
    return BNPReLU(channels)


def _max_pool_2x2(pool: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)`` for a 2x2, stride-2 max-pool; as two elementwise maxima where that is exact and faster.

    ``(B, C, H, W) -> (B, C, H/2, W/2)``. For a plain-contiguous input (the
    one-channel image, in any layout) with even ``H`` and ``W`` and no
    gradient wanted: the maximum of each pair of rows, then of each pair of
    columns. The same values (NaN included) as ``pool``, 10-14x faster on
    2 CPU cores (1.5 -> 0.11 ms for 8 slices of 256x256, where torch's
    kernel walks one channel a pixel at a time); ``pool`` itself otherwise.
    """
    B, C, H, W = x.shape if x.dim() == 4 else (0, 0, 1, 1)
    if (
        x.dim() != 4 or H % 2 or W % 2 or x.requires_grad or not x.is_contiguous() or x.numel() == 0
        or pool.kernel_size not in (2, (2, 2)) or pool.stride not in (2, (2, 2))
        or pool.padding not in (0, (0, 0)) or pool.dilation not in (1, (1, 1))
        or pool.ceil_mode or pool.return_indices
    ):
        return pool(x)
    rows = x.view(B * C, H // 2, 2, W)
    rows = torch.maximum(rows[:, :, 0], rows[:, :, 1])  # (B*C, H/2, W)
    cols = rows.view(B * C, H // 2, W // 2, 2)
    return torch.maximum(cols[..., 0], cols[..., 1]).view(B, C, H // 2, W // 2)


class InitialBlock(nn.Module):
    """3x3 stride-2 convolution concatenated with a 2x2 max-pool of the input.

    ``(B, C_in, H, W) -> (B, 16, H/2, W/2)`` for even ``H``, ``W``; the
    convolution gives ``16 - C_in`` channels, the pool the ``C_in`` others.
    """

    def __init__(self, in_channels: int, out_channels: int = 16) -> None:
        super().__init__()
        if not 1 <= in_channels < out_channels:
            raise ValueError(f"in_channels must be between 1 and {out_channels - 1}, got {in_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.norm_act = _bn_prelu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv(x)
        pool = _max_pool_2x2(self.pool, x).to(conv.dtype)  # autocast: the conv may run in half precision
        if _truly_channels_last(conv):
            pool = pool.to(memory_format=torch.channels_last)  # see _truly_channels_last
        return self.norm_act(torch.cat([conv, pool], dim=1))


class RegularBottleneck(nn.Module):
    """Residual bottleneck at constant resolution and width.

    Branch: 1x1 reduce -> main convolution -> 1x1 expand -> spatial dropout,
    each convolution followed by batch norm and PReLU; the output is
    ``PReLU(x + branch(x))``.

    Parameters
    ----------
    channels : input and output channels.
    kind : ``"regular"`` (3x3), ``"dilated"`` (3x3 with ``dilation``) or
        ``"asymmetric"`` (5x1 then 1x5).
    dilation : dilation of a ``"dilated"`` bottleneck.
    dropout : probability of zeroing a whole channel (training only).
    """

    def __init__(self, channels: int, kind: str = "regular", dilation: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        inner = channels // BOTTLENECK_RATIO
        if kind == "regular":
            main = nn.Conv2d(inner, inner, 3, padding=1, bias=False)
        elif kind == "dilated":
            main = nn.Conv2d(inner, inner, 3, padding=dilation, dilation=dilation, bias=False)
        elif kind == "asymmetric":
            main = nn.Sequential(
                nn.Conv2d(inner, inner, (5, 1), padding=(2, 0), bias=False),
                nn.Conv2d(inner, inner, (1, 5), padding=(0, 2), bias=False),
            )
        else:
            raise ValueError(f"unknown bottleneck kind {kind!r}; choose regular, dilated or asymmetric")
        self.kind = kind
        self.dilation = dilation
        self.branch = nn.Sequential(
            nn.Conv2d(channels, inner, 1, bias=False),
            _bn_prelu(inner),
            main,
            _bn_prelu(inner),
            nn.Conv2d(inner, channels, 1, bias=False),
            _bn_prelu(channels),
            _spatial_dropout(dropout),
        )
        self.out_act = PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _end(self.out_act, self.branch, x, x)


class DownsamplingBottleneck(nn.Module):
    """Halve the resolution and widen: ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``.

    Main path: 2x2 max-pool (its indices are returned for the decoder) then
    zero channels appended up to ``C_out``. Branch: 2x2 stride-2 reduce ->
    3x3 -> 1x1 expand -> spatial dropout.

    Returns
    -------
    (out, indices) : Tensor ``(B, C_out, H/2, W/2)``, int64 Tensor ``(B, C_in, H/2, W/2)``
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        inner = out_channels // BOTTLENECK_RATIO
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, inner, 2, stride=2, bias=False),
            _bn_prelu(inner),
            nn.Conv2d(inner, inner, 3, padding=1, bias=False),
            _bn_prelu(inner),
            nn.Conv2d(inner, out_channels, 1, bias=False),
            _bn_prelu(out_channels),
            _spatial_dropout(dropout),
        )
        self.out_act = PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = self.pool(x)
        # the main path's channels are zero beyond the first C_in: add only those
        return _end(self.out_act, self.branch, x, main), indices


class UpsamplingBottleneck(nn.Module):
    """Double the resolution and narrow: ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``.

    Main path: 1x1 convolution to ``C_out`` then max-unpooling with the
    indices of the matching :class:`DownsamplingBottleneck` (whose input had
    ``C_out`` channels). Branch: 1x1 reduce -> 3x3 stride-2 transposed
    convolution -> 1x1 expand -> spatial dropout.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        inner = out_channels // BOTTLENECK_RATIO
        self.main = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False),
            _bn_prelu(inner),
            nn.ConvTranspose2d(inner, inner, 3, stride=2, padding=1, output_padding=1, bias=False),
            _bn_prelu(inner),
            nn.Conv2d(inner, out_channels, 1, bias=False),
            _bn_prelu(out_channels),
            _spatial_dropout(dropout),
        )
        self.out_act = PReLU(out_channels)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        fused = _ends_fused(self.out_act, x)
        branch, drop = _branch_before_dropout(self.branch, x) if fused else (self.branch(x), None)
        main = self.unpool(self.main(x).to(branch.dtype), indices, output_size=branch.shape[-2:])
        if fused:
            return _fused_end(self.out_act, branch, main, drop)
        return _sum_and_activate(self.out_act, branch, main)


def _stage_2_or_3(dropout: float) -> nn.Sequential:
    """The 8 bottlenecks shared by stages 2 and 3 (128 channels), in the paper's order."""
    layout = [
        ("regular", 1),
        ("dilated", 2),
        ("asymmetric", 1),
        ("dilated", 4),
        ("regular", 1),
        ("dilated", 8),
        ("asymmetric", 1),
        ("dilated", 16),
    ]
    return nn.Sequential(*(RegularBottleneck(128, kind, dilation, dropout) for kind, dilation in layout))


class ENet(nn.Module):
    """ENet semantic segmentation network for images of any size.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for MR), at most 15.
    num_classes : int
        Output classes (2: background, target).
    dropout_initial : float
        Spatial dropout probability in stage 1.
    dropout : float
        Spatial dropout probability in stages 2 to 5.

    Notes
    -----
    ``forward`` takes ``(B, in_channels, H, W)`` float images of any ``H``,
    ``W`` >= 1 and returns logits ``(B, num_classes, H, W)`` on the same
    pixel grid. With ``in_channels=1, num_classes=2`` the network has about
    0.36 M parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        dropout_initial: float = 0.01,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        for name, p in (("dropout_initial", dropout_initial), ("dropout", dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self._config = {
            "in_channels": int(in_channels),
            "num_classes": int(num_classes),
            "dropout_initial": float(dropout_initial),
            "dropout": float(dropout),
        }
        self.initial = InitialBlock(in_channels, 16)
        self.down1 = DownsamplingBottleneck(16, 64, dropout_initial)
        self.stage1 = nn.Sequential(*(RegularBottleneck(64, "regular", 1, dropout_initial) for _ in range(4)))
        self.down2 = DownsamplingBottleneck(64, 128, dropout)
        self.stage2 = _stage_2_or_3(dropout)
        self.stage3 = _stage_2_or_3(dropout)
        self.up4 = UpsamplingBottleneck(128, 64, dropout)
        self.stage4 = nn.Sequential(RegularBottleneck(64, "regular", 1, dropout), RegularBottleneck(64, "regular", 1, dropout))
        self.up5 = UpsamplingBottleneck(64, 16, dropout)
        self.stage5 = RegularBottleneck(16, "regular", 1, dropout)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments: ``ENet(**model.config)`` rebuilds this architecture."""
        return dict(self._config)

    @staticmethod
    def padding_for(height: int, width: int) -> tuple[int, int, int, int]:
        """Padding ``(left, right, top, bottom)`` in pixels that makes both sides multiples of 8.

        Sides are padded up to the next multiple of 8 (and to at least
        ``MIN_PADDED_SIDE``), split evenly between both sides of each axis,
        the odd pixel after; the order is that of
        :func:`torch.nn.functional.pad` (last axis first).
        """
        pad_h = max(MIN_PADDED_SIDE, height + (-height % STRIDE)) - height
        pad_w = max(MIN_PADDED_SIDE, width + (-width % STRIDE)) - width
        return (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sides are already multiples of 8.

        Parameters
        ----------
        x : Tensor (B, in_channels, H, W), H and W multiples of 8

        Returns
        -------
        Tensor (B, num_classes, H, W)
        """
        x = self.initial(x)
        x, indices1 = self.down1(x)
        x = self.stage1(x)
        x, indices2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, indices2))
        x = self.stage5(self.up5(x, indices1))
        return self.fullconv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images of any size.

        Parameters
        ----------
        x : Tensor (B, in_channels, H, W), float

        Returns
        -------
        Tensor (B, num_classes, H, W)
            Unnormalised class scores; ``[:, :, i, j]`` belongs to input pixel ``(i, j)``.
        """
        if x.dim() != 4 or x.shape[1] != self._config["in_channels"]:
            raise ValueError(
                f"ENet expects a (B, {self._config['in_channels']}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        height, width = x.shape[-2], x.shape[-1]
        left, right, top, bottom = self.padding_for(height, width)
        if left or right or top or bottom:
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
        logits = self.forward_padded(x)
        return logits[:, :, top : top + height, left : left + width]
