"""ENet's PReLUs on the CPU through a small C kernel built at first use: in place for prediction, one pass for training.

ENet applies 109 PReLUs per pass. torch's ``prelu`` writes each result into
a fresh tensor, torch has no in-place per-channel PReLU (``leaky_relu_``
takes one slope for all channels; no composition of stock operators does it
in one pass), and the backward pass our :class:`~napari_sizeloss.network.PReLU`
builds from torch's operators makes four passes over memory. This module's
kernels, each the same arithmetic as torch's in the same order (so the same
bits):

- :func:`prelu_`: PReLU written over its input (prediction);
- :func:`add_prelu_`: a bottleneck's ``prelu(branch + main)`` written over
  the branch (prediction);
- :func:`prelu`: PReLU into a new tensor in one pass on torch's threads
  (training's forward, which keeps the input for the backward pass);
- :func:`prelu_backward`: the input's gradient and the slopes' per-element
  terms in one pass (training's backward);
- ``bn_sums_rows``, ``bn_prelu_rows``, ``bn_prelu_backward_sums_rows``,
  ``bn_prelu_backward_input_rows``: training's batch norm then PReLU on
  channels-last tensors, called only by :mod:`napari_sizeloss.native_op`'s
  fused operator (these are within float rounding of torch's, not bit for
  bit: their sums run in another order; that operator checks them).

Whole-slice prediction on 2 CPU cores is 11-14 % faster, training steps 5-8 %
(``python scripts/native_prelu_bench.py``; ``docs/benchmarks.md``).

On Linux, the first time a kernel is wanted, this module compiles
:data:`SOURCE` (OpenMP C) with the system's C compiler (``$CC``, else ``cc``
or ``gcc``; about 0.1 s), caches the shared library under the user's cache
folder (``$NAPARI_SIZELOSS_CACHE_DIR`` overrides it), keyed by the source,
the compiler, its flags and the CPU (the build targets the CPU it runs on),
loads it with :mod:`ctypes` and checks every kernel against torch's
operators on awkward values (signed zeros, infinities, NaN, subnormals)
before any use. Without a compiler, on another system, with a torch not
built on GNU OpenMP, when anything in that goes wrong, or with
``NAPARI_SIZELOSS_NATIVE=0``, each function returns False or None and the
caller uses torch's operators; :func:`status` says which.

Only tensors that no one else reads may be handed to :func:`prelu_` and
:func:`add_prelu_`: they overwrite their input. ENet does so only without
gradients, where each of its PReLUs reads a fresh activation.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["prelu_", "add_prelu_", "prelu", "prelu_backward", "status", "load", "SOURCE", "ENV_SWITCH", "CACHE_ENV"]

#: Environment variable: "0", "false", "no" or "off" keep torch's PReLU.
ENV_SWITCH = "NAPARI_SIZELOSS_NATIVE"

#: Environment variable: the folder the compiled library is cached in (default: the user's cache folder).
CACHE_ENV = "NAPARI_SIZELOSS_CACHE_DIR"

#: Tensors with fewer elements run on one thread (an OpenMP team's start costs more than they do).
_PARALLEL_MIN = 32768

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* take_a ? a : b, done on the bits so that the compiler vectorises the loops (a branch on random signs
 * mispredicts). */
static inline float select_bits(int take_a, float a, float b) {
    uint32_t ab, bb, rb, keep = -(uint32_t)take_a;
    float r;
    memcpy(&ab, &a, 4);
    memcpy(&bb, &b, 4);
    rb = (ab & keep) | (bb & ~keep);
    memcpy(&r, &rb, 4);
    return r;
}

/* PReLU at z: z > 0 ? z : w * z, bit for bit as torch.prelu (NaN kept as it is). */
static inline float prelu_at(float z, float w) {
    return select_bits(z > 0.0f, z, w * z);
}

/* The same over x's bits, for the kernels that write over their input. */
static inline uint32_t prelu_bits(uint32_t xb, float w) {
    float x, y;
    uint32_t yb;
    memcpy(&x, &xb, 4);
    y = prelu_at(x, w);
    memcpy(&yb, &y, 4);
    return yb;
}

static inline uint32_t add_prelu_bits(uint32_t yb, uint32_t ab, float w) {
    float y, a, s;
    uint32_t sb;
    memcpy(&y, &yb, 4);
    memcpy(&a, &ab, 4);
    s = y + a;
    memcpy(&sb, &s, 4);
    return prelu_bits(sb, w);
}

/* x: rows x channels, channels innermost (an NHWC tensor: rows = N*H*W). */
void prelu_rows(float *x, const float *w, int64_t rows, int64_t channels, int threads, int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * channels >= parallel_min)
    for (int64_t r = 0; r < rows; ++r) {
        uint32_t *restrict p = (uint32_t *)(x + r * channels);
        const float *restrict wr = w;
        for (int64_t c = 0; c < channels; ++c)
            p[c] = prelu_bits(p[c], wr[c]);
    }
}

/* x: planes x plane_size, plane i has slope w[i % channels] (an NCHW tensor: planes = N*C). */
void prelu_planes(float *x, const float *w, int64_t planes, int64_t channels, int64_t plane_size, int threads,
                  int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (planes * plane_size >= parallel_min)
    for (int64_t i = 0; i < planes; ++i) {
        uint32_t *restrict p = (uint32_t *)(x + i * plane_size);
        const float wi = w[i % channels];
        for (int64_t k = 0; k < plane_size; ++k)
            p[k] = prelu_bits(p[k], wi);
    }
}

/* y = prelu(y + a) over y; a has the first `added` of y's channels (rows x added, NHWC). */
void add_prelu_rows(float *y, const float *a, const float *w, int64_t rows, int64_t channels, int64_t added,
                    int threads, int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * channels >= parallel_min)
    for (int64_t r = 0; r < rows; ++r) {
        uint32_t *restrict p = (uint32_t *)(y + r * channels);
        const uint32_t *restrict q = (const uint32_t *)(a + r * added);
        const float *restrict wr = w;
        for (int64_t c = 0; c < added; ++c)
            p[c] = add_prelu_bits(p[c], q[c], wr[c]);
        for (int64_t c = added; c < channels; ++c)
            p[c] = prelu_bits(p[c], wr[c]);
    }
}

/* The same for NCHW tensors: y has planes = N*channels planes, a has N*added. */
void add_prelu_planes(float *y, const float *a, const float *w, int64_t planes, int64_t channels, int64_t added,
                      int64_t plane_size, int threads, int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (planes * plane_size >= parallel_min)
    for (int64_t i = 0; i < planes; ++i) {
        uint32_t *restrict p = (uint32_t *)(y + i * plane_size);
        const int64_t n = i / channels, c = i % channels;
        const float wi = w[c];
        if (c < added) {
            const uint32_t *restrict q = (const uint32_t *)(a + (n * added + c) * plane_size);
            for (int64_t k = 0; k < plane_size; ++k)
                p[k] = add_prelu_bits(p[k], q[k], wi);
        } else {
            for (int64_t k = 0; k < plane_size; ++k)
                p[k] = prelu_bits(p[k], wi);
        }
    }
}

/* Out of place, for training's forward: out = prelu(x), NHWC rows or NCHW planes as above. */
void prelu_rows_out(const float *restrict x, float *restrict out, const float *restrict w, int64_t rows,
                    int64_t channels, int threads, int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * channels >= parallel_min)
    for (int64_t r = 0; r < rows; ++r) {
        const uint32_t *restrict p = (const uint32_t *)(x + r * channels);
        uint32_t *restrict o = (uint32_t *)(out + r * channels);
        for (int64_t c = 0; c < channels; ++c)
            o[c] = prelu_bits(p[c], w[c]);
    }
}

void prelu_planes_out(const float *restrict x, float *restrict out, const float *restrict w, int64_t planes,
                      int64_t channels, int64_t plane_size, int threads, int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (planes * plane_size >= parallel_min)
    for (int64_t i = 0; i < planes; ++i) {
        const uint32_t *restrict p = (const uint32_t *)(x + i * plane_size);
        uint32_t *restrict o = (uint32_t *)(out + i * plane_size);
        const float wi = w[i % channels];
        for (int64_t k = 0; k < plane_size; ++k)
            o[k] = prelu_bits(p[k], wi);
    }
}

/* Training's backward at z for the output gradient g, as network._PReLUFunction computes it with torch's
 * operators: gp = z <= 0 ? +0 : g (threshold_backward), gn = g - gp; returns gz = gp + gn * w and sets
 * *t = gn * z (torch then sums t per channel for the slope's gradient). */
static inline float prelu_grad_at(float g, float z, float w, float *t) {
    const float gp = select_bits(!(z <= 0.0f), g, 0.0f), gn = g - gp;
    *t = gn * z;
    return gp + gn * w;
}

static inline void prelu_grad_bits(uint32_t gb, uint32_t xbits, float w, uint32_t *gx, uint32_t *t) {
    float g, x, a, b;
    memcpy(&g, &gb, 4);
    memcpy(&x, &xbits, 4);
    a = prelu_grad_at(g, x, w, &b);
    memcpy(gx, &a, 4);
    memcpy(t, &b, 4);
}

void prelu_backward_rows(const float *restrict g, const float *restrict x, const float *restrict w,
                         float *restrict gx, float *restrict t, int64_t rows, int64_t channels, int threads,
                         int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * channels >= parallel_min)
    for (int64_t r = 0; r < rows; ++r) {
        const uint32_t *restrict gr = (const uint32_t *)(g + r * channels);
        const uint32_t *restrict xr = (const uint32_t *)(x + r * channels);
        uint32_t *restrict gxr = (uint32_t *)(gx + r * channels);
        uint32_t *restrict tr = (uint32_t *)(t + r * channels);
        for (int64_t c = 0; c < channels; ++c)
            prelu_grad_bits(gr[c], xr[c], w[c], &gxr[c], &tr[c]);
    }
}

void prelu_backward_planes(const float *restrict g, const float *restrict x, const float *restrict w,
                           float *restrict gx, float *restrict t, int64_t planes, int64_t channels,
                           int64_t plane_size, int threads, int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (planes * plane_size >= parallel_min)
    for (int64_t i = 0; i < planes; ++i) {
        const int64_t o = i * plane_size;
        const uint32_t *restrict gp = (const uint32_t *)(g + o);
        const uint32_t *restrict xp = (const uint32_t *)(x + o);
        uint32_t *restrict gxp = (uint32_t *)(gx + o);
        uint32_t *restrict tp = (uint32_t *)(t + o);
        const float wi = w[i % channels];
        for (int64_t k = 0; k < plane_size; ++k)
            prelu_grad_bits(gp[k], xp[k], wi, &gxp[k], &tp[k]);
    }
}

#include <omp.h>

/* Training's batch norm then PReLU in one operator (napari_sizeloss.native_op's bn_prelu, which calls
 * these through their addresses), channels innermost (rows = N*H*W). Unlike the kernels above these are
 * not bit for bit torch's: the per-channel sums run in another order (within float rounding of torch's).
 * Each thread sums blocks of BN_BLOCK rows in float, adds each block's sum to its row of `scratch`
 * (threads x k*channels doubles, zeroed by the caller) and the rows are added in thread order into
 * `out`: the same bits for the same number of threads. channels <= 1024 (the operator's limit). */
#include <omp.h>
#define BN_BLOCK 64

static void add_rows_of(const double *restrict scratch, double *restrict out, int64_t width, int team) {
    for (int64_t c = 0; c < width; ++c) {
        double s = 0.0;
        for (int t = 0; t < team; ++t)
            s += scratch[t * width + c];
        out[c] = s;
    }
}

/* out[c] = sum over rows of x[r, c] (mean == NULL), else of (x[r, c] - mean[c])^2. */
void bn_sums_rows(const float *restrict x, const float *restrict mean, double *restrict scratch,
                  double *restrict out, int64_t rows, int64_t channels, int threads, int64_t parallel_min) {
    const int team = rows * channels >= parallel_min ? threads : 1;
    #pragma omp parallel num_threads(team)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t r0 = rows * t / n, r1 = rows * (t + 1) / n;
        double *restrict part = scratch + t * channels;
        float acc[channels];
        for (int64_t b = r0; b < r1; b += BN_BLOCK) {
            const int64_t e = b + BN_BLOCK < r1 ? b + BN_BLOCK : r1;
            for (int64_t c = 0; c < channels; ++c)
                acc[c] = 0.0f;
            for (int64_t r = b; r < e; ++r) {
                const float *restrict xr = x + r * channels;
                if (mean == NULL) {
                    for (int64_t c = 0; c < channels; ++c)
                        acc[c] += xr[c];
                } else {
                    for (int64_t c = 0; c < channels; ++c) {
                        const float d = xr[c] - mean[c];
                        acc[c] += d * d;
                    }
                }
            }
            for (int64_t c = 0; c < channels; ++c)
                part[c] += acc[c];
        }
    }
    add_rows_of(scratch, out, channels, team);
}

/* y = prelu(x * alpha + shift, slope): the normalised value z's affine form and the activation, one pass. */
void bn_prelu_rows(const float *restrict x, const float *restrict alpha, const float *restrict shift,
                   const float *restrict slope, float *restrict y, int64_t rows, int64_t channels, int threads,
                   int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * channels >= parallel_min)
    for (int64_t r = 0; r < rows; ++r) {
        const float *restrict xr = x + r * channels;
        float *restrict yr = y + r * channels;
        for (int64_t c = 0; c < channels; ++c) {
            const float z = xr[c] * alpha[c] + shift[c];
            yr[c] = prelu_at(z, slope[c]);
        }
    }
}

/* The backward pass's sums, with z recomputed from x as bn_prelu_rows computes it and dz the gradient
 * at z: out[0:C] = sum of g * z where z <= 0 (the slopes' gradient), out[C:2C] = sum of dz (the bias's),
 * out[2C:3C] = sum of dz * (x - mean). scratch: threads x 3C. */
void bn_prelu_backward_sums_rows(const float *restrict g, const float *restrict x, const float *restrict mean,
                                 const float *restrict alpha, const float *restrict shift,
                                 const float *restrict slope, double *restrict scratch, double *restrict out,
                                 int64_t rows, int64_t channels, int threads, int64_t parallel_min) {
    const int team = rows * channels >= parallel_min ? threads : 1;
    #pragma omp parallel num_threads(team)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t r0 = rows * t / n, r1 = rows * (t + 1) / n;
        double *restrict part = scratch + t * 3 * channels;
        float s_slope[channels], s_dz[channels], s_dzx[channels];
        for (int64_t b = r0; b < r1; b += BN_BLOCK) {
            const int64_t e = b + BN_BLOCK < r1 ? b + BN_BLOCK : r1;
            for (int64_t c = 0; c < channels; ++c) {
                s_slope[c] = 0.0f;
                s_dz[c] = 0.0f;
                s_dzx[c] = 0.0f;
            }
            for (int64_t r = b; r < e; ++r) {
                const float *restrict xr = x + r * channels;
                const float *restrict gr = g + r * channels;
                for (int64_t c = 0; c < channels; ++c) {
                    const float z = xr[c] * alpha[c] + shift[c];
                    const int positive = z > 0.0f;
                    const float dz = select_bits(positive, gr[c], slope[c] * gr[c]);
                    s_slope[c] += select_bits(positive, 0.0f, gr[c] * z);
                    s_dz[c] += dz;
                    s_dzx[c] += dz * (xr[c] - mean[c]);
                }
            }
            for (int64_t c = 0; c < channels; ++c) {
                part[c] += s_slope[c];
                part[channels + c] += s_dz[c];
                part[2 * channels + c] += s_dzx[c];
            }
        }
    }
    add_rows_of(scratch, out, 3 * channels, team);
}

/* The input's gradient: gx = (dz - a - (x - mean) * b) * k, per channel a = sum dz / N,
 * b = sum dz (x - mean) * invstd^2 / N, k = weight * invstd (as torch's batch-norm backward). */
void bn_prelu_backward_input_rows(const float *restrict g, const float *restrict x, const float *restrict mean,
                                  const float *restrict alpha, const float *restrict shift,
                                  const float *restrict slope, const float *restrict a, const float *restrict b,
                                  const float *restrict k, float *restrict gx, int64_t rows, int64_t channels,
                                  int threads, int64_t parallel_min) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * channels >= parallel_min)
    for (int64_t r = 0; r < rows; ++r) {
        const float *restrict xr = x + r * channels;
        const float *restrict gr = g + r * channels;
        float *restrict out = gx + r * channels;
        for (int64_t c = 0; c < channels; ++c) {
            const float z = xr[c] * alpha[c] + shift[c];
            const float dz = select_bits(z > 0.0f, gr[c], slope[c] * gr[c]);
            out[c] = (dz - a[c] - (xr[c] - mean[c]) * b[c]) * k[c];
        }
    }
}

/* A bottleneck's end in training, one operator (napari_sizeloss.native_op's sum_prelu, which calls these
 * through their addresses): its spatial dropout, residual sum and PReLU, y = prelu(z) with
 * z = b * n + m where the main path has the channel (c < added) and z = b * n beyond, bit for bit as
 * torch's mul_, add_ and prelu in turn. b: rows x channels (channels innermost, rows = N*H*W); m: rows x added;
 * n: the dropout's factor per image and channel (images x channels; the caller passes ones, one image of all
 * the rows, for no dropout: b * 1 is b, bit for bit). */
void sum_prelu_rows(const float *restrict b, const float *restrict m, const float *restrict n,
                    const float *restrict slope, float *restrict y, int64_t rows, int64_t channels, int64_t added,
                    int64_t rows_per_image, int threads, int64_t parallel_min) {
    const int team = rows * channels >= parallel_min ? threads : 1;
    #pragma omp parallel num_threads(team)
    {
        const int id = omp_get_thread_num(), nth = omp_get_num_threads();
        const int64_t r0 = rows * id / nth, r1 = rows * (id + 1) / nth;
        int64_t image = r0 / rows_per_image, next = (image + 1) * rows_per_image;  /* no division per row */
        for (int64_t r = r0; r < r1; ++r) {
            if (r == next) {
                ++image;
                next += rows_per_image;
            }
            const float *restrict br = b + r * channels, *restrict mr = m + r * added;
            const float *restrict nr = n + image * channels;
            float *restrict yr = y + r * channels;
            for (int64_t c = 0; c < added; ++c)
                yr[c] = prelu_at(br[c] * nr[c] + mr[c], slope[c]);
            for (int64_t c = added; c < channels; ++c)
                yr[c] = prelu_at(br[c] * nr[c], slope[c]);
        }
    }
}

/* Its backward: z recomputed as above (n as there); gz and the slope's terms gn * z as prelu_grad_at computes
 * them; gb = gz * n, gm = gz on the main path's channels (rows x added); out[c] = the sum of the terms over the
 * rows (the slope's gradient), summed in blocks of BN_BLOCK rows as the batch norm's sums above (scratch:
 * threads x channels doubles, zeroed by the caller): the same bits for the same number of threads, within
 * float rounding of torch's sum of the terms. */
void sum_prelu_backward_rows(const float *restrict g, const float *restrict b, const float *restrict m,
                             const float *restrict n, const float *restrict slope, float *restrict gb,
                             float *restrict gm, double *restrict scratch, double *restrict out, int64_t rows,
                             int64_t channels, int64_t added, int64_t rows_per_image, int threads,
                             int64_t parallel_min) {
    const int team = rows * channels >= parallel_min ? threads : 1;
    #pragma omp parallel num_threads(team)
    {
        const int id = omp_get_thread_num(), nth = omp_get_num_threads();
        const int64_t r0 = rows * id / nth, r1 = rows * (id + 1) / nth;
        int64_t image = r0 / rows_per_image, next = (image + 1) * rows_per_image;
        double *restrict part = scratch + id * channels;
        float acc[channels];
        for (int64_t block = r0; block < r1; block += BN_BLOCK) {
            const int64_t e = block + BN_BLOCK < r1 ? block + BN_BLOCK : r1;
            for (int64_t c = 0; c < channels; ++c)
                acc[c] = 0.0f;
            for (int64_t r = block; r < e; ++r) {
                if (r == next) {
                    ++image;
                    next += rows_per_image;
                }
                const int64_t o = r * channels;
                const float *restrict br = b + o, *restrict gr = g + o, *restrict nr = n + image * channels;
                const float *restrict mr = m + r * added;
                float *restrict gbr = gb + o, *restrict gmr = gm + r * added;
                /* ivdep: this many streams are more than GCC 12 checks for overlap at run time (restrict or
                 * not), and without it these loops stay scalar (3-4x slower); none of them overlap. */
                #pragma GCC ivdep
                for (int64_t c = 0; c < added; ++c) {
                    float t;
                    const float gz = prelu_grad_at(gr[c], br[c] * nr[c] + mr[c], slope[c], &t);
                    acc[c] += t;
                    gbr[c] = gz * nr[c];
                    gmr[c] = gz;
                }
                #pragma GCC ivdep
                for (int64_t c = added; c < channels; ++c) {
                    float t;
                    gbr[c] = prelu_grad_at(gr[c], br[c] * nr[c], slope[c], &t) * nr[c];
                    acc[c] += t;
                }
            }
            for (int64_t c = 0; c < channels; ++c)
                part[c] += acc[c];
        }
    }
    add_rows_of(scratch, out, channels, team);
}

"""

#: Compiler flags: -march=native builds for this CPU (the cache key includes the CPU's flags); no
#: fused multiply-adds, no fast-math: each operation rounds as torch's do.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")

_lock = threading.Lock()
_state: dict = {"lib": None, "status": None}


def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("vendor_id", "model name", "flags", "Features"))]
        return "".join(dict.fromkeys(lines))  # each distinct line once
    except OSError:
        return platform.processor()


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$NAPARI_SIZELOSS_CACHE_DIR``, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "native"
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("napari-sizeloss", appauthor=False)) / "native"
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "napari-sizeloss" / "native"


def _version(compiler: str) -> str:
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.splitlines()[0] if out.stdout else ""


def _build(compiler: str, target: Path) -> None:
    """Compile :data:`SOURCE` into ``target``, atomically (a half-written library is never there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "prelu.c"
        src.write_text(SOURCE, encoding="utf-8")
        out = Path(tmp) / target.name
        result = subprocess.run([compiler, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no message)"])[0]
            raise RuntimeError(f"{Path(compiler).name} failed: {first}")
        os.replace(out, target)


def _open(compiler: str, target: Path) -> ctypes.CDLL:
    """Load the library cached at ``target``, building it first if it is missing or does not load."""
    if target.exists():
        try:
            return _bind(ctypes.CDLL(str(target)))
        except (OSError, AttributeError):
            pass  # truncated, foreign, or without our kernels: build it again
    try:
        _build(compiler, target)
    except OSError:  # the cache folder cannot be written: build for this process only
        with tempfile.TemporaryDirectory(prefix="napari-sizeloss-native-") as tmp:
            private = Path(tmp) / target.name
            _build(compiler, private)
            return _bind(ctypes.CDLL(str(private)))  # once loaded, the file can go
    return _bind(ctypes.CDLL(str(target)))


def _openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return {ln.split()[-1] for ln in f if "libgomp" in ln or "libiomp" in ln or "libomp" in ln}
    except OSError:
        return set()


#: Each kernel's C signature after its pointers: "i" an int64_t, "t" the thread count (int).
_SIGNATURES = {
    "prelu_rows": (2, "iiti"),
    "prelu_planes": (2, "iiiti"),
    "add_prelu_rows": (3, "iiiti"),
    "add_prelu_planes": (3, "iiiiti"),
    "prelu_rows_out": (3, "iiti"),
    "prelu_planes_out": (3, "iiiti"),
    "prelu_backward_rows": (5, "iiti"),
    "prelu_backward_planes": (5, "iiiti"),
}


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare each kernel's argument types (a wrong count would be undefined behaviour, not an error)."""
    kinds = {"i": ctypes.c_int64, "t": ctypes.c_int}
    for name, (pointers, rest) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * pointers + [kinds[k] for k in rest]
        fn.restype = None
    return lib


#: Values each kernel must round as torch's operators do: zeros of both signs, infinities, NaN, subnormals.
_AWKWARD = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-40, -3.5])


def _awkward_slopes(gen: torch.Generator) -> torch.Tensor:
    """11 per-channel slopes for the checks: negative, zero, one, above one, and random."""
    return torch.cat([torch.tensor([0.25, -0.5, 0.0, 1.0, 1.5]), torch.randn(6, generator=gen)])


def _awkward_pair(shape: tuple, gen: torch.Generator, layout, grad_layout) -> tuple[torch.Tensor, torch.Tensor]:
    """An input (awkward values first) and a gradient (awkward values last) for the checks, in these layouts."""
    x = torch.randn(shape, generator=gen) * 3
    g = torch.randn(shape, generator=gen)
    x.view(-1)[: _AWKWARD.numel()] = _AWKWARD
    g.view(-1)[-_AWKWARD.numel():] = _AWKWARD
    return x.contiguous(memory_format=layout), g.contiguous(memory_format=grad_layout)


def _torch_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PReLU's input gradient and the slopes' per-element terms from torch's operators, as
    ``network._PReLUFunction``'s short path computes them: what the compiled backward must match."""
    grad_pos = torch.ops.aten.threshold_backward.default(grad, x, 0)
    grad_neg = grad - grad_pos
    return torch.addcmul(grad_pos, grad_neg, weight.view(1, -1, 1, 1)), grad_neg * x


def _self_test(lib: ctypes.CDLL) -> None:
    """Every kernel against torch's operators, both layouts, on awkward values (signed zeros, infinities, NaN).

    Raises RuntimeError naming the first kernel whose bits differ.
    """
    gen = torch.Generator().manual_seed(0)
    special = _AWKWARD
    weight = _awkward_slopes(gen)
    for shape, layout in (((3, 11, 7, 5), torch.channels_last), ((3, 11, 7, 5), torch.contiguous_format),
                          ((2, 11, 64, 32), torch.channels_last), ((2, 11, 64, 32), torch.contiguous_format)):
        x = torch.randn(shape, generator=gen) * 3
        x.view(-1)[: special.numel()] = special
        x = x.contiguous(memory_format=layout)
        expected = torch.prelu(x, weight)
        if not _run(lib, x, weight, threads=2) or not _same_bits(expected, x):
            raise RuntimeError("the compiled PReLU differs from torch.prelu")
        for added in (shape[1], 4):
            y = (torch.randn(shape, generator=gen) * 3).contiguous(memory_format=layout)
            a = torch.randn((shape[0], added, *shape[2:]), generator=gen)
            a.view(-1)[: special.numel()] = special
            a = a.contiguous(memory_format=layout)
            summed = y.clone()
            summed[:, :added] += a
            expected = torch.prelu(summed, weight)
            if not _run_add(lib, y, a, weight, threads=2) or not _same_bits(expected, y):
                raise RuntimeError("the compiled sum and PReLU differs from torch's")

    for shape, layout in (((3, 11, 7, 5), torch.channels_last), ((2, 11, 64, 32), torch.contiguous_format),
                          ((2, 11, 64, 32), torch.channels_last)):
        x, g = _awkward_pair(shape, gen, layout, layout)
        y = _run_out(lib, x, weight, threads=2)
        if y is None or not _same_bits(torch.prelu(x, weight), y):
            raise RuntimeError("the compiled PReLU (out of place) differs from torch.prelu")
        got = _run_backward(lib, g, x, weight, threads=2)
        if got is None or not all(_same_bits(e, o) for e, o in zip(_torch_backward(g, x, weight), got, strict=True)):
            raise RuntimeError("the compiled PReLU backward differs from torch's operators")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def load() -> ctypes.CDLL | None:
    """The compiled library, building and checking it on the first call; None where unavailable.

    :func:`status` says why it is unavailable. Thread-safe; tried once per process.
    """
    if _state["status"] is not None:
        return _state["lib"]
    with _lock:
        if _state["status"] is not None:
            return _state["lib"]
        lib, why = None, None
        try:
            if _switched_off():
                why = f"off ({ENV_SWITCH}=0)"
            elif not sys.platform.startswith("linux"):
                why = f"not built on {sys.platform}"
            elif "OpenMP" not in torch.__config__.parallel_info():
                why = "torch does not use OpenMP"
            elif (compiler := _compiler()) is None:
                why = "no C compiler (cc, gcc or $CC)"
            else:
                version = _version(compiler)
                key = hashlib.sha256("\0".join(
                    (SOURCE, " ".join(FLAGS), compiler, version, platform.machine(), _cpu_signature())
                ).encode()).hexdigest()[:20]
                candidate = _open(compiler, cache_dir() / f"prelu-{key}.so")
                if len(_openmp_runtimes()) > 1:  # ours did not bind to torch's libgomp: two thread pools
                    why = "it loaded a second OpenMP runtime beside torch's"
                else:
                    _self_test(candidate)
                    lib, why = candidate, f"in use ({version or Path(compiler).name})"
        except Exception as exc:  # noqa: BLE001 - any failure means torch's PReLU, never a crash
            lib, why = None, f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        _state["lib"], _state["status"] = lib, why
        return lib


def status() -> str:
    """One line: whether the compiled PReLU is in use, or why not (builds it if not yet tried)."""
    load()
    return _state["status"]


def _slopes(weight: torch.Tensor, channels: int) -> torch.Tensor | None:
    w = weight.detach()
    if w.dtype is not torch.float32 or w.device.type != "cpu" or w.numel() != channels or not w.is_contiguous():
        return None
    return w


def _layout(x: torch.Tensor) -> str | None:
    """``"planes"`` for a contiguous NCHW tensor, ``"rows"`` for a channels-last one, else None.

    A tensor contiguous both ways (one channel, or 1x1 planes) counts as planes.
    """
    if x.is_contiguous():
        return "planes"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "rows"
    return None


def _run(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, threads: int) -> bool:
    channels = x.shape[1]
    if (w := _slopes(weight, channels)) is None or (layout := _layout(x)) is None:
        return False
    if layout == "planes":
        planes = x.shape[0] * channels
        lib.prelu_planes(x.data_ptr(), w.data_ptr(), planes, channels, x.numel() // planes, threads, _PARALLEL_MIN)
    else:
        lib.prelu_rows(x.data_ptr(), w.data_ptr(), x.numel() // channels, channels, threads, _PARALLEL_MIN)
    return True


#: The memory format each of :func:`_layout`'s layouts is.
_FORMATS = {"planes": torch.contiguous_format, "rows": torch.channels_last}


def _run_out(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, threads: int) -> torch.Tensor | None:
    channels = x.shape[1]
    if (w := _slopes(weight, channels)) is None or (layout := _layout(x)) is None:
        return None
    out = torch.empty_like(x)  # x's layout
    if layout == "planes":
        planes = x.shape[0] * channels
        lib.prelu_planes_out(x.data_ptr(), out.data_ptr(), w.data_ptr(), planes, channels, x.numel() // planes,
                             threads, _PARALLEL_MIN)
    else:
        lib.prelu_rows_out(x.data_ptr(), out.data_ptr(), w.data_ptr(), x.numel() // channels, channels, threads,
                           _PARALLEL_MIN)
    return out


def _run_backward(lib: ctypes.CDLL, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  threads: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    channels = x.shape[1]
    if (w := _slopes(weight, channels)) is None or grad.shape != x.shape:
        return None
    layout = _layout(x)
    if layout is None or _layout(grad) != layout:
        return None
    grad_x, product = torch.empty_like(x), torch.empty_like(x)
    if layout == "planes":
        planes = x.shape[0] * channels
        lib.prelu_backward_planes(grad.data_ptr(), x.data_ptr(), w.data_ptr(), grad_x.data_ptr(), product.data_ptr(),
                                  planes, channels, x.numel() // planes, threads, _PARALLEL_MIN)
    else:
        lib.prelu_backward_rows(grad.data_ptr(), x.data_ptr(), w.data_ptr(), grad_x.data_ptr(), product.data_ptr(),
                                x.numel() // channels, channels, threads, _PARALLEL_MIN)
    return grad_x, product


def _run_add(lib: ctypes.CDLL, y: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, threads: int) -> bool:
    channels, added = y.shape[1], a.shape[1]
    if (w := _slopes(weight, channels)) is None or added > channels or a.shape[0] != y.shape[0] \
            or a.shape[2:] != y.shape[2:]:
        return False
    layout = _layout(y)
    if layout is None or not a.is_contiguous(memory_format=_FORMATS[layout]):
        return False
    if layout == "planes":
        planes = y.shape[0] * channels
        lib.add_prelu_planes(y.data_ptr(), a.data_ptr(), w.data_ptr(), planes, channels, added, y.numel() // planes,
                             threads, _PARALLEL_MIN)
    else:
        lib.add_prelu_rows(y.data_ptr(), a.data_ptr(), w.data_ptr(), y.numel() // channels, channels, added,
                           threads, _PARALLEL_MIN)
    return True


def _float4d(x: torch.Tensor) -> bool:
    """A float32 4-D tensor on the CPU, not a subclass, not empty."""
    return type(x) is torch.Tensor and x.dtype is torch.float32 and x.dim() == 4 and x.device.type == "cpu" \
        and x.numel() > 0


def _plain(x: torch.Tensor) -> bool:
    """As :func:`_float4d`, and without gradients (it may be overwritten)."""
    return _float4d(x) and not x.requires_grad


def add_prelu_(y: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> bool:
    """Overwrite ``y`` with ``prelu(y + a)``, if the compiled kernel can; return whether it did.

    A residual bottleneck's sum and activation in one pass over memory
    instead of two; each value is rounded as ``torch.prelu(y + a)`` rounds it.

    Parameters
    ----------
    y : torch.Tensor, float32 (N, C, H, W) on the CPU, contiguous or channels-last
        The branch; overwritten. Must not require gradients.
    a : torch.Tensor, float32 (N, C_a, H, W), C_a <= C, in ``y``'s layout
        Added to ``y``'s first ``C_a`` channels (a downsampling bottleneck's
        pooled input has fewer channels than its branch); not changed.
    weight : torch.Tensor, float32 (C,)

    Returns False, leaving both untouched, for anything else (as :func:`prelu_`,
    or ``a`` and ``y`` sharing memory).
    """
    if not (_plain(y) and _plain(a)):
        return False
    lo, hi = y.data_ptr(), y.data_ptr() + y.numel() * 4
    if lo < a.data_ptr() + a.numel() * 4 and a.data_ptr() < hi:
        return False
    lib = load()
    return lib is not None and _run_add(lib, y, a, weight, torch.get_num_threads())


def prelu_(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Apply PReLU to ``x`` in place, if the compiled kernel can; return whether it did.

    Parameters
    ----------
    x : torch.Tensor, float32 (N, C, H, W) on the CPU, contiguous or channels-last
        Overwritten with ``prelu(x, weight)``. Must not require gradients.
    weight : torch.Tensor, float32 (C,)
        One slope per channel.

    Returns False, leaving ``x`` untouched, for anything else (other dtypes,
    layouts or devices, a single shared slope, tensor subclasses, no kernel).
    """
    if not _plain(x):
        return False
    lib = load()
    return lib is not None and _run(lib, x, weight, torch.get_num_threads())


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """``torch.prelu(x, weight)`` into a new tensor laid out as ``x``, or None where the kernel cannot.

    For training's forward pass (``x`` is kept for the backward pass, so it
    is not overwritten): the same bits as ``torch.prelu``, one pass on all
    of torch's threads. Shapes and layouts as :func:`prelu_`.
    """
    if not _float4d(x):
        return None
    lib = load()
    return None if lib is None else _run_out(lib, x, weight, torch.get_num_threads())


def prelu_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """PReLU's input gradient and the per-element terms of its slopes' gradient, in one pass.

    Returns ``(grad_x, terms)``, the same bits as torch's operators give them
    (``grad_pos = threshold_backward(grad, x, 0)``, ``grad_neg = grad -
    grad_pos``, ``grad_x = addcmul(grad_pos, grad_neg, weight)``, ``terms =
    grad_neg * x``; the slopes' gradient is ``terms.sum((0, 2, 3))``), or None
    where the kernel cannot (``grad`` and ``x`` float32, 4-D, on the CPU,
    both contiguous or both channels-last).
    """
    if not (_float4d(x) and _float4d(grad)):
        return None
    lib = load()
    return None if lib is None else _run_backward(lib, grad, x, weight, torch.get_num_threads())
