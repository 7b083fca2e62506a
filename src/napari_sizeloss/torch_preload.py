"""Load torch's largest shared libraries without holding the interpreter lock.

Why: ``import torch`` loads ``libtorch_cpu.so`` (about 400 MB, thousands of
operator registrations run by its static initialisers) through the import
machinery, which calls ``dlopen`` while holding the interpreter lock. Any
other Python thread, napari's GUI thread included, waits meanwhile: about
0.3 s in a plain process and 0.4 s in napari's on 2 CPU cores, however the
import is moved off the GUI thread (``scripts/preload_bench.py``).

Functions of a library opened with :class:`ctypes.CDLL` run with the
interpreter lock released (ctypes' documentation), so calling the C
library's own ``dlopen`` through ctypes loads the same files while other
threads keep running. The later ``import torch`` then finds them loaded (the
dynamic linker matches them by name) and only bumps their reference counts.
The flags are the interpreter's own (:func:`sys.getdlopenflags`, local
symbols), so the libraries end up exactly as the import would leave them.

Linux only (elsewhere, or whenever anything is not as expected, it does
nothing and the import loads the libraries as usual). Qt-free, torch-free.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

__all__ = ["TORCH_LIBRARIES", "preload_torch_libraries"]

#: In load order: ``libtorch_cpu.so`` needs ``libc10.so``. Both are in every
#: Linux build of torch, CUDA builds included (their CUDA libraries are not
#: preloaded: torch finds those itself).
TORCH_LIBRARIES = ("libc10.so", "libtorch_cpu.so")


def _torch_library_dir() -> Path | None:
    """``torch/lib`` of the torch that ``import torch`` would load, found without importing it."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _c_dlopen():
    """The C library's ``dlopen`` as a ctypes function (called without the interpreter lock)."""
    for name in (None, "libdl.so.2"):  # glibc >= 2.34 has it in libc; older ones in libdl
        try:
            dlopen = ctypes.CDLL(name).dlopen
        except (OSError, AttributeError):
            continue
        dlopen.restype = ctypes.c_void_p
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        return dlopen
    return None


def preload_torch_libraries() -> bool:
    """Load :data:`TORCH_LIBRARIES` with the interpreter lock released, before ``import torch``.

    Call it on the thread that will import torch, just before. Returns True
    when every library is loaded; False (having changed nothing that
    matters) when torch is already imported, not installed, not on Linux, or
    a library is missing or fails to load, in which case the import loads
    the rest as usual. Never raises.
    """
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    lib_dir = _torch_library_dir()
    if lib_dir is None:
        return False
    paths = [lib_dir / name for name in TORCH_LIBRARIES]
    if not all(path.is_file() for path in paths):
        return False
    dlopen = _c_dlopen()
    if dlopen is None:
        return False
    flags = sys.getdlopenflags()
    for path in paths:
        # The handle is kept open for the life of the process, as torch's own would be.
        if not dlopen(str(path).encode(), flags):
            return False
    return True
