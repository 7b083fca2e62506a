"""Child process of :func:`napari_sizeloss.compiled.compile_ahead` (not a public entry point).

``python -m napari_sizeloss._compile_child SPEC``: SPEC is JSON written by
``compile_ahead`` (never a user's file): the model's class as
``module:qualname``, its constructor keyword arguments, the input shape,
training mode, whether to compile the backward pass, the backend, torch's
thread count and the parent's process id (the child exits when the parent
is gone). Compiles once, fills inductor's on-disk cache, exits 0; on
failure prints one line and exits 1.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Exit at once when ``parent`` is gone (napari closed mid-compile): no orphan compiling on."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import torch

    from .compiled import CompiledForward, _root_cause

    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    if spec.get("parent"):
        _exit_with_parent(int(spec["parent"]))
    torch.set_num_threads(int(spec["threads"]))
    module, _, qualname = spec["factory"].partition(":")
    factory = importlib.import_module(module)
    for part in qualname.split("."):
        factory = getattr(factory, part)
    model = factory(**spec["config"]).train(bool(spec["training"]))
    forward = CompiledForward(model, backend=spec["backend"])
    x = torch.zeros(spec["shape"])
    try:
        with torch.set_grad_enabled(bool(spec["grad"])):
            compiled = forward._compiled(x)  # no eager fallback here: a failure must show
            if spec["grad"]:
                compiled.float().sum().backward()
    except Exception as exc:
        print(_root_cause(exc), file=sys.stderr)  # the parent keeps its last line, 300 characters
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
