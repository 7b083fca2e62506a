"""Keep freed tensor memory in the process instead of handing it back to the OS each time.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's
defaults, a block over the mmap threshold is mapped fresh for every
allocation and unmapped when freed, and free memory at the top of the heap
is trimmed back to the kernel. ENet's activations (a few MB each at batch 8,
25 MB at batch 25) are freed after every forward pass, so the next pass
touches brand-new pages: hundreds to thousands of page faults per 256x256
slice predicted, each elementwise layer then 3-5 times slower than its memory
traffic. With batch-norm folding (:mod:`napari_sizeloss.inference`) and
batches of 8, whole-slice prediction went from about 28 to 20-22 ms per
slice on 2 cores (``python scripts/alloc_bench.py``; tables in
``docs/benchmarks.md``).

:func:`tune_allocator` raises glibc's mmap threshold to 32 MiB (its
ceiling) and its trim threshold to 256 MiB, so those blocks are reused from
the heap. The cost: up to 256 MiB of freed memory may stay with the process
(counted in its resident size, reused by the next allocation) instead of
returning to the system. It is process-wide and done once (when a
``TrainingSession`` starts, on the first prediction, and when a compiled
forward is made; training steps faulted in 3,400-8,400 fresh pages each
before, about 8 % slower: ``python scripts/alloc_bench.py --train``); it does nothing
on other C libraries (macOS, Windows, musl), and
``NAPARI_SIZELOSS_TUNE_MALLOC=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["tune_allocator", "allocator_tuned", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ENV_SWITCH"]

#: Blocks up to this size (bytes) come from the heap, not fresh mappings (glibc's ceiling on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024

#: Free memory kept at the top of the heap before glibc trims it (bytes).
TRIM_THRESHOLD = 256 * 1024 * 1024

#: Environment variable: "0", "false", "no" or "off" leave the allocator alone.
ENV_SWITCH = "NAPARI_SIZELOSS_TUNE_MALLOC"

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_state: dict[str, bool | None] = {"tuned": None}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once for this process.

    Returns
    -------
    bool
        True when the thresholds are (now or already) raised; False when
        switched off by ``NAPARI_SIZELOSS_TUNE_MALLOC=0``, on a C library
        other than glibc, or when glibc refused a value.
    """
    with _lock:
        if _state["tuned"] is not None:
            return bool(_state["tuned"])
        if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
            _state["tuned"] = False
            return False
        libc = _glibc()
        if libc is None:
            _state["tuned"] = False
            return False
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
        _state["tuned"] = ok
        return ok


def allocator_tuned() -> bool | None:
    """Whether :func:`tune_allocator` raised the thresholds (None: not tried yet)."""
    return _state["tuned"]
