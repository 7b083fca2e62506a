"""ENet's PReLU for training as a torch operator with its backward in C++, built in the background.

Python costs a :class:`~napari_sizeloss.network.PReLU` trained through a
``torch.autograd.Function`` (:mod:`napari_sizeloss.native_prelu`'s kernels
inside) about 80 us more per PReLU and step than a C++ autograd node would,
on each of ENet's 109 PReLUs whatever the image size, and its backward pass
takes the interpreter lock each time. This module wraps the same kernels
(called through their addresses in the library ``native_prelu`` loaded and
checked) in a torch operator, ``torch.ops.napari_sizeloss.prelu``, whose
autograd node is C++: training steps 7-11 % faster on 2 CPU cores (a
step's per-operator floor 23 %), the same values to the bit
(``python scripts/native_op_bench.py``; ``docs/benchmarks.md``).

Compiling against torch's C++ headers takes about 20 s of one core (the C
kernels take 0.1 s), so the build never blocks: :func:`start` (called by the
first training step, and by the napari widget when it gets an image) runs
the C++ compiler (``$CXX``, else ``g++`` or ``c++``) in a background process
at lower priority, and training uses the Python function until the operator
is built, loaded and checked bit for bit against torch's operators (awkward
values, both layouts). The library is cached beside the C kernels (see
:func:`napari_sizeloss.native_prelu.cache_dir`), keyed by the source, the
compiler, its flags and torch's version and place, so later processes load
it at once. A build outlives the process that started it (it is short, and
only writes its own file in the cache folder, renamed into place when
complete): the next process then finds it ready.

The same library holds a second operator, ``torch.ops.napari_sizeloss.bn_prelu``
(:data:`BN_PRELU`): training's batch norm and the PReLU after it in one
node, on channels-last float32 CPU tensors, through ``native_prelu``'s
``bn_*`` kernels (the statistics' two sums in one pass each, the
normalised and activated output in one, the backward in two, ``z``
recomputed from the input instead of two saved activations). It is not bit
for bit torch's (its sums run in another order), so it is checked within
float rounding against ``batch_norm`` then ``prelu`` before use (output,
four gradients, running statistics); :class:`~napari_sizeloss.network.BNPReLU`
uses it: training steps a further 13-15 % faster on 2 CPU cores
(``python scripts/native_op_bench.py --fused``).

A third, ``torch.ops.napari_sizeloss.sum_prelu`` (:data:`SUM_PRELU`), ends
each of ENet's 27 bottlenecks in training: its spatial dropout's product,
the residual sum and the PReLU, ``prelu(branch * noise + main)``, in one
pass forward (instead of three operators and two in-place writes) and one
backward, with ``z`` recomputed from the saved inputs instead of kept and
the slopes' gradient summed in the same pass. The same values as torch's
``mul``, ``add`` and this package's PReLU in turn, bit for bit (NaN payloads
and the sign of a zero gradient aside), but for the slopes' gradient, a sum
in another order (within float rounding of torch's), checked so before use;
the same dropout masks, drawn from the same generator in the same order.
Training steps 4-5 % faster on 2 CPU cores (``python
scripts/native_op_bench.py --ends``).

Not used, and :func:`status` says why in one line: with
``NAPARI_SIZELOSS_NATIVE=0``, where the C kernels are not in use, without a
C++ compiler or torch's headers, or when the build or its check fails (a
fused operator that fails its check leaves the PReLU operator in use and
says so). The PReLU operator takes float32 4-D CPU tensors, contiguous or
channels-last, with one slope per channel;
:class:`~napari_sizeloss.network.PReLU` hands it nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from . import native_prelu

__all__ = ["start", "started", "wait", "status", "enabled", "OP", "BN_PRELU", "SUM_PRELU", "CXX_SOURCE", "NAMESPACE"]

#: The operators' namespace: ``torch.ops.napari_sizeloss``.
NAMESPACE = "napari_sizeloss"

#: ``torch.ops.napari_sizeloss.prelu.default`` once built, loaded and checked; None until then (or never).
#: :class:`~napari_sizeloss.network.PReLU` reads it on every training call.
OP = None

#: ``torch.ops.napari_sizeloss.bn_prelu.default`` once built, loaded and checked (within float rounding of
#: torch's ``batch_norm`` then ``prelu``); None until then (or never). :class:`~napari_sizeloss.network.BNPReLU`
#: reads it on every training call.
BN_PRELU = None

#: ``torch.ops.napari_sizeloss.sum_prelu.default`` once built, loaded and checked (torch's ``mul``, ``add``
#: and ``prelu`` in turn, bit for bit but for the slopes' gradient); None until then (or never). ENet's
#: bottlenecks end with it in training: ``prelu(branch * noise + main, slope)`` (dropout, residual sum, PReLU).
SUM_PRELU = None

#: The operator in C++. It calls :mod:`napari_sizeloss.native_prelu`'s kernels, already built and checked
#: in the process, through pointers handed over after loading (``napari_sizeloss_set_kernels``): one copy
#: of the kernels, no OpenMP or CPU-specific flags in this build. Until they are set it uses torch's operators.
CXX_SOURCE = r"""
#include <cstdint>

extern "C" {
typedef void (*OutRows)(const float*, float*, const float*, int64_t, int64_t, int, int64_t);
typedef void (*OutPlanes)(const float*, float*, const float*, int64_t, int64_t, int64_t, int, int64_t);
typedef void (*BackRows)(const float*, const float*, const float*, float*, float*, int64_t, int64_t, int, int64_t);
typedef void (*BackPlanes)(const float*, const float*, const float*, float*, float*, int64_t, int64_t, int64_t, int,
                           int64_t);
typedef void (*BnSums)(const float*, const float*, double*, double*, int64_t, int64_t, int, int64_t);
typedef void (*BnPReLU)(const float*, const float*, const float*, const float*, float*, int64_t, int64_t, int,
                        int64_t);
typedef void (*BnBackSums)(const float*, const float*, const float*, const float*, const float*, const float*,
                           double*, double*, int64_t, int64_t, int, int64_t);
typedef void (*BnBackInput)(const float*, const float*, const float*, const float*, const float*, const float*,
                            const float*, const float*, const float*, float*, int64_t, int64_t, int, int64_t);
typedef void (*SumPReLU)(const float*, const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,
                         int64_t, int, int64_t);
typedef void (*SumPReLUBack)(const float*, const float*, const float*, const float*, const float*, float*, float*,
                             double*, double*, int64_t, int64_t, int64_t, int64_t, int, int64_t);
}

namespace {
OutRows prelu_rows_out = nullptr;
OutPlanes prelu_planes_out = nullptr;
BackRows prelu_backward_rows = nullptr;
BackPlanes prelu_backward_planes = nullptr;
BnSums bn_sums_rows = nullptr;
BnPReLU bn_prelu_rows = nullptr;
BnBackSums bn_prelu_backward_sums_rows = nullptr;
BnBackInput bn_prelu_backward_input_rows = nullptr;
SumPReLU sum_prelu_rows = nullptr;
SumPReLUBack sum_prelu_backward_rows = nullptr;
}  // namespace

extern "C" void napari_sizeloss_set_kernels(void* out_rows, void* out_planes, void* back_rows, void* back_planes,
                                            void* bn_sums, void* bn_prelu, void* bn_back_sums, void* bn_back_input,
                                            void* sum_prelu, void* sum_prelu_back) {
  prelu_rows_out = reinterpret_cast<OutRows>(out_rows);
  prelu_planes_out = reinterpret_cast<OutPlanes>(out_planes);
  prelu_backward_rows = reinterpret_cast<BackRows>(back_rows);
  prelu_backward_planes = reinterpret_cast<BackPlanes>(back_planes);
  bn_sums_rows = reinterpret_cast<BnSums>(bn_sums);
  bn_prelu_rows = reinterpret_cast<BnPReLU>(bn_prelu);
  bn_prelu_backward_sums_rows = reinterpret_cast<BnBackSums>(bn_back_sums);
  bn_prelu_backward_input_rows = reinterpret_cast<BnBackInput>(bn_back_input);
  sum_prelu_rows = reinterpret_cast<SumPReLU>(sum_prelu);
  sum_prelu_backward_rows = reinterpret_cast<SumPReLUBack>(sum_prelu_back);
}

extern "C" int napari_sizeloss_kernels_ready() {
  return prelu_rows_out && prelu_planes_out && prelu_backward_rows && prelu_backward_planes && bn_sums_rows &&
         bn_prelu_rows && bn_prelu_backward_sums_rows && bn_prelu_backward_input_rows && sum_prelu_rows &&
         sum_prelu_backward_rows;
}

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/batch_norm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/prelu.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/zeros.h>
#include <cmath>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

const int64_t kParallelMin = @PARALLEL_MIN@;

enum class Layout { kNone, kPlanes, kRows };

Layout layout_of(const Tensor& t) {
  if (t.is_contiguous()) return Layout::kPlanes;
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return Layout::kRows;
  return Layout::kNone;
}

bool is_float4d(const Tensor& t) {
  return t.defined() && t.scalar_type() == at::kFloat && t.dim() == 4 && t.device().is_cpu() && t.numel() > 0;
}

bool takes(const Tensor& x, const Tensor& w) {
  return napari_sizeloss_kernels_ready() && is_float4d(x) && layout_of(x) != Layout::kNone &&
         w.scalar_type() == at::kFloat && w.device().is_cpu() && w.is_contiguous() && w.dim() == 1 &&
         w.numel() == x.size(1) && x.size(1) > 1;
}

// torch.prelu(x, w), one pass (napari_sizeloss.native_prelu's kernels); torch's own where they cannot.
Tensor prelu_forward(const Tensor& x, const Tensor& w) {
  if (!takes(x, w)) return at::prelu(x, w);
  Tensor out = at::empty_like(x);
  const int64_t channels = x.size(1);
  const int threads = at::get_num_threads();
  if (layout_of(x) == Layout::kPlanes) {
    const int64_t planes = x.size(0) * channels;
    prelu_planes_out(x.data_ptr<float>(), out.data_ptr<float>(), w.data_ptr<float>(), planes, channels,
                     x.numel() / planes, threads, kParallelMin);
  } else {
    prelu_rows_out(x.data_ptr<float>(), out.data_ptr<float>(), w.data_ptr<float>(), x.numel() / channels,
                   channels, threads, kParallelMin);
  }
  return out;
}

class PReLUFunction : public torch::autograd::Function<PReLUFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w) {
    ctx->save_for_backward({x, w});
    return prelu_forward(x, w);
  }

  // As network._PReLUFunction.backward computes it: the same operations in the same order.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "napari_sizeloss.prelu has no double backward");
    auto saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const Tensor& w = saved[1];
    const Tensor& grad = grads[0];
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    Tensor grad_x, grad_w;
    const Layout layout = layout_of(x);
    if (takes(x, w) && is_float4d(grad) && grad.sizes() == x.sizes() && layout_of(grad) == layout) {
      grad_x = at::empty_like(x);
      Tensor terms = at::empty_like(x);
      const int64_t channels = x.size(1);
      const int threads = at::get_num_threads();
      if (layout == Layout::kPlanes) {
        const int64_t planes = x.size(0) * channels;
        prelu_backward_planes(grad.data_ptr<float>(), x.data_ptr<float>(), w.data_ptr<float>(),
                              grad_x.data_ptr<float>(), terms.data_ptr<float>(), planes, channels,
                              x.numel() / planes, threads, kParallelMin);
      } else {
        prelu_backward_rows(grad.data_ptr<float>(), x.data_ptr<float>(), w.data_ptr<float>(),
                            grad_x.data_ptr<float>(), terms.data_ptr<float>(), x.numel() / channels, channels,
                            threads, kParallelMin);
      }
      if (want_w) grad_w = at::sum(terms, {0, 2, 3});
    } else {
      Tensor grad_pos = at::threshold_backward(grad, x, 0);
      Tensor grad_neg = at::sub(grad, grad_pos);
      if (want_x) grad_x = at::addcmul(grad_pos, grad_neg, w.view({1, -1, 1, 1}));
      if (want_w) grad_w = at::sum(grad_neg.mul_(x), {0, 2, 3});
    }
    return {want_x ? grad_x : Tensor(), want_w ? grad_w : Tensor()};
  }
};

Tensor prelu_autograd(const Tensor& x, const Tensor& w) { return PReLUFunction::apply(x, w); }

// ---- Training's batch norm then PReLU, one operator (channels-last float32 on the CPU) ----

const int64_t kMaxFusedChannels = 1024;  // the C kernels keep per-channel sums on the stack

bool is_vector(const Tensor& t, int64_t n) {
  return t.defined() && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.dim() == 1 && t.numel() == n &&
         t.is_contiguous();
}

bool bn_prelu_takes(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& slope,
                    const Tensor& running_mean, const Tensor& running_var) {
  if (!napari_sizeloss_kernels_ready() || !is_float4d(x) || layout_of(x) != Layout::kRows) return false;
  const int64_t c = x.size(1);
  return c > 1 && c <= kMaxFusedChannels && x.numel() / c > 1 && is_vector(weight, c) && is_vector(bias, c) &&
         is_vector(slope, c) && is_vector(running_mean, c) && is_vector(running_var, c);
}

// torch's composition, where the kernels cannot: batch_norm (training) then prelu.
Tensor bn_prelu_composite(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& slope,
                          const Tensor& running_mean, const Tensor& running_var, double momentum, double eps) {
  return at::prelu(at::batch_norm(x, weight, bias, running_mean, running_var, true, momentum, eps, false), slope);
}

struct Normalised {
  Tensor mean, invstd, alpha, shift;  // per channel; z = x * alpha + shift = (x - mean) * invstd * weight + bias
};

// The batch's per-channel mean and biased variance (two passes: the sum, then the squares about the mean),
// the running statistics updated as torch does (unbiased variance), and z's affine form.
Normalised normalise(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                     const Tensor& running_var, double momentum, double eps) {
  const int64_t c = x.size(1), n = x.numel() / c;
  const int threads = at::get_num_threads();
  auto doubles = x.options().dtype(at::kDouble);
  Tensor scratch = at::zeros({threads, c}, doubles), sums = at::empty({c}, doubles);
  Normalised out{at::empty({c}, x.options()), at::empty({c}, x.options()), at::empty({c}, x.options()),
                 at::empty({c}, x.options())};
  float* mean = out.mean.data_ptr<float>();
  const double* s = sums.data_ptr<double>();
  bn_sums_rows(x.data_ptr<float>(), nullptr, scratch.data_ptr<double>(), sums.data_ptr<double>(), n, c, threads,
               kParallelMin);
  for (int64_t i = 0; i < c; ++i) mean[i] = static_cast<float>(s[i] / n);
  scratch.zero_();
  bn_sums_rows(x.data_ptr<float>(), mean, scratch.data_ptr<double>(), sums.data_ptr<double>(), n, c, threads,
               kParallelMin);
  float* invstd = out.invstd.data_ptr<float>();
  float* alpha = out.alpha.data_ptr<float>();
  float* shift = out.shift.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* rm = running_mean.data_ptr<float>();
  float* rv = running_var.data_ptr<float>();
  for (int64_t i = 0; i < c; ++i) {
    const double var = s[i] / n;
    invstd[i] = static_cast<float>(1.0 / std::sqrt(var + eps));
    alpha[i] = invstd[i] * w[i];
    shift[i] = b[i] - mean[i] * alpha[i];
    rm[i] = static_cast<float>(momentum * mean[i] + (1.0 - momentum) * rm[i]);
    rv[i] = static_cast<float>(momentum * var * n / (n - 1) + (1.0 - momentum) * rv[i]);
  }
  // written in place, as torch's batch norm writes them: autograd must see it (a graph that saved them fails)
  running_mean.unsafeGetTensorImpl()->bump_version();
  running_var.unsafeGetTensorImpl()->bump_version();
  return out;
}

Tensor bn_prelu_apply(const Tensor& x, const Normalised& z, const Tensor& slope) {
  Tensor y = at::empty_like(x);
  const int64_t c = x.size(1);
  bn_prelu_rows(x.data_ptr<float>(), z.alpha.data_ptr<float>(), z.shift.data_ptr<float>(), slope.data_ptr<float>(),
                y.data_ptr<float>(), x.numel() / c, c, at::get_num_threads(), kParallelMin);
  return y;
}

// torch's batch norm refuses to train on one value per channel (its variance is undefined): so does this.
void check_values_per_channel(const Tensor& x) {
  TORCH_CHECK(x.dim() < 2 || x.size(1) == 0 || x.numel() / x.size(1) > 1,
              "Expected more than 1 value per channel when training, got input size ", x.sizes());
}

// Without autograd (inference mode): the fused forward, or torch's composition.
Tensor bn_prelu_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& slope,
                        const Tensor& running_mean, const Tensor& running_var, double momentum, double eps) {
  check_values_per_channel(x);
  if (!bn_prelu_takes(x, weight, bias, slope, running_mean, running_var))
    return bn_prelu_composite(x, weight, bias, slope, running_mean, running_var, momentum, eps);
  return bn_prelu_apply(x, normalise(x, weight, bias, running_mean, running_var, momentum, eps), slope);
}

class BNPReLUFunction : public torch::autograd::Function<BNPReLUFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& bias,
                        const Tensor& slope, const Tensor& running_mean, const Tensor& running_var, double momentum,
                        double eps) {
    Normalised z = normalise(x, weight, bias, running_mean, running_var, momentum, eps);
    Tensor y = bn_prelu_apply(x, z, slope);
    // the input, not the output: the output may be changed in place (ENet's spatial dropout)
    ctx->save_for_backward({x, weight, slope, z.mean, z.invstd, z.alpha, z.shift});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "napari_sizeloss.bn_prelu has no double backward");
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &slope = saved[2], &mean = saved[3], &invstd = saved[4],
                 &alpha = saved[5], &shift = saved[6];
    const Tensor grad = grads[0].contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t c = x.size(1), n = x.numel() / c;
    const int threads = at::get_num_threads();
    auto doubles = x.options().dtype(at::kDouble);
    Tensor scratch = at::zeros({threads, 3 * c}, doubles), sums = at::empty({3 * c}, doubles);
    bn_prelu_backward_sums_rows(grad.data_ptr<float>(), x.data_ptr<float>(), mean.data_ptr<float>(),
                                alpha.data_ptr<float>(), shift.data_ptr<float>(), slope.data_ptr<float>(),
                                scratch.data_ptr<double>(), sums.data_ptr<double>(), n, c, threads, kParallelMin);
    const double* s = sums.data_ptr<double>();
    const float* is = invstd.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    Tensor grad_slope = at::empty({c}, x.options()), grad_bias = at::empty({c}, x.options()),
           grad_weight = at::empty({c}, x.options()), a = at::empty({c}, x.options()),
           b = at::empty({c}, x.options()), k = at::empty({c}, x.options());
    float *gs = grad_slope.data_ptr<float>(), *gb = grad_bias.data_ptr<float>(), *gw = grad_weight.data_ptr<float>();
    float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>(), *pk = k.data_ptr<float>();
    for (int64_t i = 0; i < c; ++i) {
      gs[i] = static_cast<float>(s[i]);
      gb[i] = static_cast<float>(s[c + i]);
      gw[i] = static_cast<float>(s[2 * c + i] * is[i]);
      pa[i] = static_cast<float>(s[c + i] / n);
      pb[i] = static_cast<float>(s[2 * c + i] * is[i] * is[i] / n);
      pk[i] = w[i] * is[i];
    }
    Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      grad_x = at::empty_like(x);
      bn_prelu_backward_input_rows(grad.data_ptr<float>(), x.data_ptr<float>(), mean.data_ptr<float>(),
                                   alpha.data_ptr<float>(), shift.data_ptr<float>(), slope.data_ptr<float>(), pa, pb,
                                   pk, grad_x.data_ptr<float>(), n, c, threads, kParallelMin);
    }
    return {grad_x,
            ctx->needs_input_grad(1) ? grad_weight : Tensor(),
            ctx->needs_input_grad(2) ? grad_bias : Tensor(),
            ctx->needs_input_grad(3) ? grad_slope : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor bn_prelu_autograd(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& slope,
                         const Tensor& running_mean, const Tensor& running_var, double momentum, double eps) {
  check_values_per_channel(x);
  if (!bn_prelu_takes(x, weight, bias, slope, running_mean, running_var))
    return bn_prelu_composite(x, weight, bias, slope, running_mean, running_var, momentum, eps);
  return BNPReLUFunction::apply(x, weight, bias, slope, running_mean, running_var, momentum, eps);
}

// ---- A bottleneck's end in training, one operator: prelu(branch * noise + main), channels-last float32 ----
// branch (N, C, H, W); main (N, Cm, H, W), Cm <= C, added to the first Cm channels; noise: spatial dropout's
// factor per image and channel, N*C values (torch's (N, C, 1, 1) mask), or none. The same bits as torch's
// mul, add and prelu in turn, forward and backward, but for the slope's gradient (summed in another order).

bool sum_prelu_takes(const Tensor& branch, const Tensor& main, const Tensor& slope,
                     const c10::optional<Tensor>& noise) {
  if (!napari_sizeloss_kernels_ready() || !is_float4d(branch) || layout_of(branch) != Layout::kRows) return false;
  const int64_t c = branch.size(1);
  if (c < 2 || c > kMaxFusedChannels || !is_vector(slope, c)) return false;
  if (!is_float4d(main) || main.size(0) != branch.size(0) || main.size(1) > c || main.size(2) != branch.size(2) ||
      main.size(3) != branch.size(3) || !main.is_contiguous(at::MemoryFormat::ChannelsLast))
    return false;
  if (noise.has_value() && noise->defined()) {
    const Tensor& n = *noise;
    if (n.scalar_type() != at::kFloat || !n.device().is_cpu() || !n.is_contiguous() ||
        n.numel() != branch.size(0) * c)
      return false;
  }
  return true;
}

Tensor sum_prelu_composite(const Tensor& branch, const Tensor& main, const Tensor& slope,
                           const c10::optional<Tensor>& noise) {
  Tensor z = noise.has_value() && noise->defined()
                 ? at::mul(branch, noise->view({branch.size(0), branch.size(1), 1, 1}))
                 : branch.clone();
  z.narrow(1, 0, main.size(1)).add_(main);
  return at::prelu(z, slope);
}

// the dropout's factor and how many rows share one image's factors: ones over all the rows for no dropout
// (b * 1 is b, bit for bit), so that one kernel loop serves both
std::pair<Tensor, int64_t> dropout_factor(const Tensor& branch, const Tensor& noise) {
  if (noise.defined()) return {noise, branch.size(2) * branch.size(3)};
  return {at::ones({branch.size(1)}, branch.options()), branch.numel() / branch.size(1)};
}

Tensor sum_prelu_apply(const Tensor& branch, const Tensor& main, const Tensor& slope, const Tensor& noise) {
  Tensor y = at::empty_like(branch);
  const int64_t c = branch.size(1), rows = branch.numel() / c;
  const auto [factor, rows_per_image] = dropout_factor(branch, noise);
  sum_prelu_rows(branch.data_ptr<float>(), main.data_ptr<float>(), factor.data_ptr<float>(), slope.data_ptr<float>(),
                 y.data_ptr<float>(), rows, c, main.size(1), rows_per_image, at::get_num_threads(), kParallelMin);
  return y;
}

Tensor sum_prelu_forward(const Tensor& branch, const Tensor& main, const Tensor& slope,
                         const c10::optional<Tensor>& noise) {
  if (!sum_prelu_takes(branch, main, slope, noise)) return sum_prelu_composite(branch, main, slope, noise);
  return sum_prelu_apply(branch, main, slope, noise.has_value() ? *noise : Tensor());
}

class SumPReLUFunction : public torch::autograd::Function<SumPReLUFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& branch, const Tensor& main, const Tensor& slope,
                        const c10::optional<Tensor>& noise) {
    Tensor n = noise.has_value() ? *noise : Tensor();
    ctx->save_for_backward({branch, main, slope, n});  // z is recomputed from these: no activation of its own
    return sum_prelu_apply(branch, main, slope, n);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "napari_sizeloss.sum_prelu has no double backward");
    auto saved = ctx->get_saved_variables();
    const Tensor &branch = saved[0], &main = saved[1], &slope = saved[2], &noise = saved[3];
    const Tensor grad = grads[0].contiguous(at::MemoryFormat::ChannelsLast);
    const bool want_b = ctx->needs_input_grad(0), want_m = ctx->needs_input_grad(1),
               want_s = ctx->needs_input_grad(2);
    // one kernel writes all three (ENet wants all three), the slope's gradient as per-channel sums
    Tensor grad_b = at::empty_like(branch), grad_m = at::empty_like(main);
    const int64_t c = branch.size(1), rows = branch.numel() / c;
    const int threads = at::get_num_threads();
    auto doubles = branch.options().dtype(at::kDouble);
    Tensor scratch = at::zeros({threads, c}, doubles), sums = at::empty({c}, doubles);
    const auto [factor, rows_per_image] = dropout_factor(branch, noise);
    sum_prelu_backward_rows(grad.data_ptr<float>(), branch.data_ptr<float>(), main.data_ptr<float>(),
                            factor.data_ptr<float>(), slope.data_ptr<float>(), grad_b.data_ptr<float>(),
                            grad_m.data_ptr<float>(), scratch.data_ptr<double>(), sums.data_ptr<double>(), rows, c,
                            main.size(1), rows_per_image, threads, kParallelMin);
    if (!want_b) grad_b = Tensor();
    if (!want_m) grad_m = Tensor();
    return {grad_b, grad_m, want_s ? sums.to(at::kFloat) : Tensor(), Tensor()};
  }
};

Tensor sum_prelu_autograd(const Tensor& branch, const Tensor& main, const Tensor& slope,
                          const c10::optional<Tensor>& noise) {
  if (!sum_prelu_takes(branch, main, slope, noise)) return sum_prelu_composite(branch, main, slope, noise);
  return SumPReLUFunction::apply(branch, main, slope, noise);
}

}  // namespace

TORCH_LIBRARY(@NAMESPACE@, m) {
  m.def("prelu(Tensor x, Tensor weight) -> Tensor");
  m.def("bn_prelu(Tensor x, Tensor weight, Tensor bias, Tensor slope, Tensor(a!) running_mean, "
        "Tensor(b!) running_var, float momentum, float eps) -> Tensor");
  m.def("sum_prelu(Tensor branch, Tensor main, Tensor slope, Tensor? noise) -> Tensor");
}
TORCH_LIBRARY_IMPL(@NAMESPACE@, CPU, m) {
  m.impl("prelu", prelu_forward);
  m.impl("bn_prelu", bn_prelu_forward);
  m.impl("sum_prelu", sum_prelu_forward);
}
TORCH_LIBRARY_IMPL(@NAMESPACE@, Autograd, m) {
  m.impl("prelu", prelu_autograd);
  m.impl("bn_prelu", bn_prelu_autograd);
  m.impl("sum_prelu", sum_prelu_autograd);
}
"""

#: C++ compiler flags (with torch's include folders, library folder and C++ ABI added at build time):
#: torch's C++ standard; its headers' warnings silenced.
CXXFLAGS = ("-O2", "-fPIC", "-shared", "-std=c++20", "-w")

#: The build's scheduling priority (``nice``): training and the GUI go first; it finishes when they idle.
NICENESS = 19

#: Seconds after which another process's unfinished build is taken for dead and built again.
STALE_BUILD_S = 900

_lock = threading.Lock()
_state: dict = {"tried": False, "status": "not started (no training step yet)", "thread": None}


def _source() -> str:
    return CXX_SOURCE.replace("@PARALLEL_MIN@", str(native_prelu._PARALLEL_MIN)).replace("@NAMESPACE@", NAMESPACE)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _torch_paths() -> tuple[Path, Path]:
    """torch's C++ include folder and library folder (raises FileNotFoundError if the headers are missing)."""
    root = Path(torch.__file__).resolve().parent
    include, lib = root / "include", root / "lib"
    if not (include / "torch" / "library.h").is_file():
        raise FileNotFoundError("torch's C++ headers are not installed")
    return include, lib


def _command(compiler: str, source: Path) -> list[str]:
    include, lib = _torch_paths()
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    return [compiler, *CXXFLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{include}",
            f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", str(source), f"-L{lib}", f"-Wl,-rpath,{lib}",
            "-ltorch_cpu", "-lc10"]


def _key(compiler: str) -> str:
    version = native_prelu._version(compiler)
    return hashlib.sha256("\0".join(
        (_source(), " ".join(CXXFLAGS), compiler, version, platform.machine(), torch.__version__,
         str(getattr(torch.version, "git_version", "")), str(Path(torch.__file__).resolve()))
    ).encode()).hexdigest()[:20]


def _library_path(compiler: str) -> Path:
    """Where the library built by ``compiler`` for this torch is cached."""
    return native_prelu.cache_dir() / f"prelu-op-{_key(compiler)}.so"


def _set(status: str) -> None:
    _state["status"] = status


def status() -> str:
    """One line: whether the C++ operator is in use, being built, or why not (starts nothing)."""
    return _state["status"]


def started() -> bool:
    """Whether :func:`start` has been called in this process."""
    return _state["tried"]


def start() -> None:
    """Make the operator available as soon as possible, without waiting for it; safe to call often.

    The first call checks what the build needs, loads the operator at once
    if a build is cached, and otherwise starts one in the background (the
    operator is loaded and checked when it completes). Later calls return at
    once. Training works throughout: until :data:`OP` is set, with the
    Python function.
    """
    if _state["tried"]:
        return
    with _lock:
        if _state["tried"]:
            return
        _state["tried"] = True
        try:
            _start_locked()
        except Exception as exc:  # noqa: BLE001 - any failure means the Python function, never a crash
            _set(f"unavailable ({type(exc).__name__}: {_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _start_locked() -> None:
    if native_prelu._switched_off():
        _set(f"off ({native_prelu.ENV_SWITCH}=0)")
        return
    if native_prelu.load() is None:
        _set(f"unavailable (the C kernels are not in use: {native_prelu.status()})")
        return
    if (compiler := _compiler()) is None:
        _set("unavailable (no C++ compiler: c++, g++ or $CXX)")
        return
    _torch_paths()
    cached = _library_path(compiler)
    if cached.is_file():  # a library that fails to load or to check is deleted: the next process rebuilds it
        _load(cached, how="cached")
        return
    _state["thread"] = threading.Thread(target=_build_and_load, args=(compiler, cached), daemon=True,
                                        name="napari-sizeloss C++ build")
    _set(f"building in the background ({Path(compiler).name})")
    _state["thread"].start()


def _build_and_load(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside ``target``, rename it into place, load it (on its own thread)."""
    t0 = time.perf_counter()
    folder, private = target.parent, None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", delete=True)
        probe.close()
    except OSError:  # the cache folder cannot be written: build for this process only
        private = Path(tempfile.mkdtemp(prefix="napari-sizeloss-op-"))
        folder, target = private, private / target.name
    try:
        source = folder / f"{target.stem}.{os.getpid()}.cpp"
        partial = folder / f".{target.stem}.{os.getpid()}.so.part"
        lock = folder / f".{target.stem}.lock"  # one build of a library at a time
        log = folder / f"{target.stem}.log"
        if not _claim(lock):
            _wait_for_other_build(target, lock)
            return
        source.write_text(_source(), encoding="utf-8")
        # A shell renames the complete library into place, so a build that outlives this process still lands;
        # it ignores the terminal's Ctrl-C and hang-up (so does gcc then). It stays in this session: Linux's
        # autogroups share the CPU between sessions whatever the niceness, and a build in its own session
        # took a full core from training (steps 2.5x slower), at nice 10 in this one 11 % over its course.
        script = ('trap "" INT HUP; out=$1; dest=$2; log=$3; src=$4; lock=$5; shift 5; '
                  '"$@" -o "$out" 2>"$log" && mv -f "$out" "$dest" && rm -f "$log"; '
                  'rc=$?; rm -f "$out" "$src" "$lock"; exit $rc')
        command = ["sh", "-c", script, "sh", str(partial), str(target), str(log), str(source), str(lock),
                   *_command(compiler, source)]
        if shutil.which("nice"):
            command = ["nice", "-n", str(NICENESS), *command]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if process.wait() != 0 or not target.is_file():
            try:
                first = next((ln for ln in log.read_text(errors="replace").splitlines() if "error" in ln), "")
            except OSError:
                first = ""
            _set(f"unavailable ({Path(compiler).name} failed: {first.strip() or 'no message'})")
            return
        _load(target, how=f"built in {time.perf_counter() - t0:.0f} s")
    except Exception as exc:  # noqa: BLE001
        _set(f"unavailable ({type(exc).__name__}: {_first_line(exc)})")
    finally:
        if private is not None:  # a loaded library stays mapped once its file is gone
            shutil.rmtree(private, ignore_errors=True)


def _claim(lock: Path) -> bool:
    """Create ``lock`` unless a live build holds it; whether this process now does.

    On a cluster or with several napari windows many processes may start at
    once; one compiler (0.9 GB of memory) is enough. A lock older than
    :data:`STALE_BUILD_S` is taken over (a build that died without cleaning up).
    """
    for _ in range(2):
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime < STALE_BUILD_S:
                    return False
                lock.unlink()
            except FileNotFoundError:
                pass  # it was just released: try again
    return False


def _wait_for_other_build(target: Path, lock: Path) -> None:
    """Wait (on the build thread) for another process's build of ``target``, then load it."""
    _set("waiting for another process's build")
    while not target.is_file():
        try:
            if time.time() - lock.stat().st_mtime > STALE_BUILD_S:
                break
        except FileNotFoundError:
            break  # released: the library is there, or that build failed
        time.sleep(1.0)
    if target.is_file():
        _load(target, how="built by another process")
    else:
        _set("unavailable (another process's build did not complete; the next process will try again)")


#: The C kernels the operator calls, in the order of ``napari_sizeloss_set_kernels``'s arguments.
_KERNELS = ("prelu_rows_out", "prelu_planes_out", "prelu_backward_rows", "prelu_backward_planes", "bn_sums_rows",
            "bn_prelu_rows", "bn_prelu_backward_sums_rows", "bn_prelu_backward_input_rows", "sum_prelu_rows",
            "sum_prelu_backward_rows")


def _hand_over_kernels(library: ctypes.CDLL) -> None:
    """Give the operator the addresses of the C kernels (loaded and checked by ``native_prelu.load()``)."""
    kernels = native_prelu.load()
    if kernels is None:
        raise RuntimeError(f"the C kernels are not in use: {native_prelu.status()}")
    setter = library.napari_sizeloss_set_kernels
    setter.argtypes = [ctypes.c_void_p] * len(_KERNELS)
    setter.restype = None
    setter(*(ctypes.cast(getattr(kernels, name), ctypes.c_void_p).value for name in _KERNELS))
    if not library.napari_sizeloss_kernels_ready():
        raise RuntimeError("the operator did not take the C kernels")


def _registered(name: str = "prelu"):
    """The operator ``name`` if a library of ours is already loaded in this process, else None.

    A second library registering the same namespace would abort the process
    (torch throws from the library's static initialiser), so none is loaded then.
    """
    try:
        return getattr(getattr(torch.ops, NAMESPACE), name).default
    except (AttributeError, RuntimeError):
        return None


def _load(path: Path, how: str) -> None:
    """Load the library at ``path``, check its operators against torch's, publish them in :data:`OP`, :data:`BN_PRELU`.
    """
    global OP, BN_PRELU, SUM_PRELU
    try:
        op = _registered()
        if op is None:
            torch.ops.load_library(str(path))
            if (op := _registered()) is None:
                raise AttributeError(f"it has no {NAMESPACE}.prelu")
            _hand_over_kernels(ctypes.CDLL(str(path)))  # the handle torch just opened
    except (OSError, RuntimeError, AttributeError) as exc:
        with contextlib.suppress(OSError):
            path.unlink()  # the next process builds it again
        _set(f"unavailable (it does not load: {_first_line(exc)})")
        return
    try:  # (no OpenMP check: the library has none of its own; it calls native_prelu's kernels)
        with torch.inference_mode(False), torch.enable_grad():
            _self_test(op)
    except Exception as exc:  # noqa: BLE001 - a wrong operator is never used
        with contextlib.suppress(OSError):
            path.unlink()
        _set(f"unavailable (it failed its check: {_first_line(exc)})")
        return
    fused, note = _registered("bn_prelu"), ""
    try:
        if fused is None:  # a library of ours from before the fused operator, loaded earlier in this process
            raise AttributeError(f"no {NAMESPACE}.bn_prelu in the loaded library")
        with torch.inference_mode(False), torch.enable_grad():
            _self_test_bn_prelu(fused)
    except Exception as exc:  # noqa: BLE001 - the PReLU operator stays; batch norm stays torch's
        fused, note = None, f"; batch norm not fused: {_first_line(exc)}"
    ends = _registered("sum_prelu")
    try:
        if ends is None:
            raise AttributeError(f"no {NAMESPACE}.sum_prelu in the loaded library")
        with torch.inference_mode(False), torch.enable_grad():
            _self_test_sum_prelu(ends)
    except Exception as exc:  # noqa: BLE001 - the other operators stay; bottleneck ends stay torch's
        ends, note = None, f"{note}; bottleneck ends not fused: {_first_line(exc)}"
    OP, BN_PRELU, SUM_PRELU = op, fused, ends
    _set(f"in use ({how}{note})")


def wait(timeout: float | None = None) -> bool:
    """Start the build if needed and wait for it up to ``timeout`` seconds; whether :data:`OP` is set."""
    start()
    thread = _state["thread"]
    if thread is not None:
        thread.join(timeout)
    return OP is not None


@contextlib.contextmanager
def enabled(use: bool, *, fused: bool | None = None, ends: bool | None = None) -> Iterator[None]:
    """Within the block, train through the operators (``True``, where loaded) or the Python function.

    ``fused`` (default: ``use``): whether batch norm and PReLU pairs train
    through the fused operator (:data:`BN_PRELU`, within float rounding of
    torch's) or apart; ``enabled(True, fused=False, ends=False)`` trains
    through the PReLU operator, the same bits as the Python function.
    ``ends`` (default: ``use``): whether bottlenecks end through
    :data:`SUM_PRELU` (the same bits either way but for the end PReLUs'
    slope gradients, summed in another order). For side-by-side
    measurements and tests; not thread-safe against a build that completes
    inside the block.
    """
    global OP, BN_PRELU, SUM_PRELU
    saved = OP, BN_PRELU, SUM_PRELU
    OP = saved[0] if use else None
    BN_PRELU = saved[1] if (use if fused is None else fused) else None
    SUM_PRELU = saved[2] if (use if ends is None else ends) else None
    try:
        yield
    finally:
        OP, BN_PRELU, SUM_PRELU = saved


def _self_test(op) -> None:
    """The operator's forward and backward against torch's operators, bit for bit, on awkward values.

    Both layouts, a gradient in the other layout (the fallback path), and
    each of the two gradients alone. Raises RuntimeError. Leaves torch's
    thread count alone (it may run beside training, on the build's thread).
    """
    gen = torch.Generator().manual_seed(0)
    weight = native_prelu._awkward_slopes(gen)
    for shape, layout, grad_layout in (
        ((3, 11, 7, 5), torch.channels_last, torch.channels_last),
        ((2, 11, 64, 32), torch.contiguous_format, torch.contiguous_format),
        ((2, 11, 64, 32), torch.channels_last, torch.channels_last),
        ((2, 11, 16, 8), torch.channels_last, torch.contiguous_format),
    ):
        x, g = native_prelu._awkward_pair(shape, gen, layout, grad_layout)
        want_x, terms = native_prelu._torch_backward(g, x, weight)
        want_w = terms.sum((0, 2, 3))
        for needs in ((True, True), (True, False), (False, True)):
            xi = x.detach().requires_grad_(needs[0])
            wi = weight.detach().requires_grad_(needs[1])
            y = op(xi, wi)
            if not native_prelu._same_bits(torch.prelu(x, weight), y):
                raise RuntimeError("the operator's PReLU differs from torch.prelu")
            got = torch.autograd.grad(y, [t for t, need in zip((xi, wi), needs, strict=True) if need], g)
            want = [t for t, need in zip((want_x, want_w), needs, strict=True) if need]
            if not all(native_prelu._same_bits(a, b) for a, b in zip(want, got, strict=True)):
                raise RuntimeError("the operator's backward differs from torch's operators")


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = want.abs().max().item()
    if not torch.isfinite(got).all() or (got - want).abs().max().item() > 1e-4 * scale + 1e-6:
        raise RuntimeError(f"the fused batch norm and PReLU's {what} differs from torch's")


def _self_test_bn_prelu(op) -> None:
    """The fused operator against torch's ``batch_norm`` (training) then ``prelu``, within float rounding.

    Output, the four gradients and both running statistics, each within
    1e-4 of its largest magnitude; one channel constant (zero variance), one
    shape small enough for one thread and one large enough for two. Raises
    RuntimeError. Leaves torch's thread count alone.
    """
    gen = torch.Generator().manual_seed(1)
    for shape in ((2, 11, 9, 7), (1, 16, 64, 48)):
        c = shape[1]
        x = torch.randn(shape, generator=gen) * 3 + 1
        x[:, 0] = 2.0
        x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
        params = [torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen),
                  torch.randn(c, generator=gen) * 0.5]
        stats = [torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5]
        results = []
        for fused in (True, False):
            xi = x.detach().requires_grad_()
            pi = [p.detach().requires_grad_() for p in params]
            si = [t.clone() for t in stats]
            if fused:
                y = op(xi, *pi, *si, 0.1, 1e-5)
            else:
                y = torch.prelu(torch.batch_norm(xi, pi[0], pi[1], si[0], si[1], True, 0.1, 1e-5, False), pi[2])
            grads = torch.autograd.grad(y, [xi, *pi], g)
            results.append([y.detach(), *grads, *si])
        names = ("output", "input gradient", "weight gradient", "bias gradient", "slope gradient",
                 "running mean", "running variance")
        for got, want, what in zip(*results, names, strict=True):
            _close(got, want, what)


def _sum_prelu_reference(branch, main, slope, noise, grad):
    """What ``sum_prelu`` must give: torch's ``mul``, narrowed ``add`` and ``prelu``, and the gradients
    as the unfused training path computes them (PReLU's backward as :func:`native_prelu._torch_backward`,
    the slopes' terms summed by torch, the dropout's product); fifth, the sum of the slopes' terms'
    magnitudes, the scale for :func:`_sums_match`."""
    z = branch * noise.view(*noise.shape[:2], 1, 1) if noise is not None else branch.clone()
    z[:, : main.shape[1]] += main
    grad_z, terms = native_prelu._torch_backward(grad, z, slope)
    grad_branch = grad_z * noise.view(*noise.shape[:2], 1, 1) if noise is not None else grad_z
    return (torch.prelu(z, slope), grad_branch, grad_z[:, : main.shape[1]], terms.sum((0, 2, 3)),
            terms.abs().sum((0, 2, 3)))


def _sum_prelu_backward_matches(y: torch.Tensor, inputs, grad: torch.Tensor, want) -> bool:
    """Whether ``y``'s backward for ``grad`` gives ``want``'s gradients (:func:`_sum_prelu_reference`'s) of
    those of ``inputs`` (branch, main, slope) that require one: the branch's and main path's bit for bit,
    the slopes' by :func:`_sums_match`."""
    needed = [i for i, t in enumerate(inputs) if t.requires_grad]
    got = dict(zip(needed, torch.autograd.grad(y, [inputs[i] for i in needed], grad), strict=True))
    return all(native_prelu._same_bits(want[1 + i], got[i]) for i in (0, 1) if i in got) \
        and (2 not in got or _sums_match(got[2], want[3], want[4]))


def _sums_match(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor) -> bool:
    """Sums of the same terms in another order: NaN where ``want`` is NaN, its infinities, and finite values
    within 1e-5 of ``scale``, the sum of the terms' magnitudes (float rounding of either order)."""
    got, want = got.detach(), want.detach()
    finite = torch.isfinite(want)
    return got.shape == want.shape and bool(
        ((got.isnan() & want.isnan()) | (~finite & (got == want))
         | (finite & ((got - want).abs() <= 1e-5 * scale))).all())


def _self_test_sum_prelu(op) -> None:
    """The bottleneck-end operator against torch's operators on awkward values: output and the branch's and
    main path's gradients bit for bit, the slopes' gradient (a sum in another order) within float rounding.

    A main path with all the channels and with fewer (a downsampling
    bottleneck's), with a dropout factor per image and channel and without,
    each subset of gradients; one size for one thread, one for two.
    Raises RuntimeError. Leaves torch's thread count alone.
    """
    gen = torch.Generator().manual_seed(2)
    slope = native_prelu._awkward_slopes(gen)
    for shape, added, dropout in (((3, 11, 7, 5), 11, True), ((3, 11, 7, 5), 4, False),
                                  ((2, 11, 64, 32), 4, True), ((2, 11, 64, 32), 11, False)):
        branch, grad = native_prelu._awkward_pair(shape, gen, torch.channels_last, torch.channels_last)
        main = torch.randn((shape[0], added, *shape[2:]), generator=gen) * 2
        main.view(-1)[-native_prelu._AWKWARD.numel():] = native_prelu._AWKWARD
        main = main.contiguous(memory_format=torch.channels_last)
        noise = None
        if dropout:  # as nn.Dropout2d(p=0.5) makes it: zeros and 1 / (1 - p)
            noise = torch.empty(shape[0], shape[1], 1, 1).bernoulli_(0.5, generator=gen).div_(0.5)
        want = _sum_prelu_reference(branch, main, slope, noise, grad)
        for needs in ((True, True, True), (True, False, False), (False, True, False), (False, False, True)):
            inputs = [t.detach().requires_grad_(need) for t, need in zip((branch, main, slope), needs, strict=True)]
            y = op(*inputs, noise)
            if not native_prelu._same_bits(want[0], y):
                raise RuntimeError("the bottleneck-end operator's output differs from torch's")
            if not _sum_prelu_backward_matches(y, inputs, grad, want):
                raise RuntimeError("the bottleneck-end operator's backward differs from torch's operators")
