"""Garbage collection confined to new objects, for work that allocates a lot inside napari's process.

A full (generation-2) collection scans every object the process holds. Once
torch (and ``torch._dynamo``, which ``torch.optim`` imports) is loaded into
napari's process, that is well over a million objects and a full collection
holds the interpreter lock for about 300 ms on 2 CPU cores: the window
freezes that long, whichever thread triggered it. Importing torch, building a
network or loading a compiled one allocate enough to trigger one.
:func:`collect_new_objects_only` keeps those collections to the objects made
inside the block. Qt-free and torch-free.
"""

from __future__ import annotations

import contextlib
import gc

__all__ = ["collect_new_objects_only"]


@contextlib.contextmanager
def collect_new_objects_only():
    """Inside, the garbage collector scans only objects created inside; afterwards, all again.

    ``gc.freeze()`` on entry moves every object alive into the collector's
    permanent generation, ``gc.unfreeze()`` on exit moves them back. Used in
    napari's process around loading a compiled network and around a training
    job's first import of torch and building of its session: the full
    collections they trigger then scan their own new objects, not napari's
    and torch's whole heap, while holding the interpreter lock.
    Cyclic garbage made of objects from before waits until after the block
    (nothing is lost: unfreezing hands it back to the collector). Not
    reentrant in effect: an inner block's exit unfreezes for the outer.

    Measured in the widget (``scripts/gui_bench.py --compile`` with the
    cache filled, against ``--no-gc-freeze``, three alternating runs each):
    the longest stall while the compiled network loads went from 294-429 ms
    to 124-198 ms. Freezing for good (no unfreeze) would also end later
    collections, but it keeps every napari layer removed afterwards alive:
    layers sit in reference cycles.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
