"""What the C++ operator tests need: a Linux machine with a C++ compiler and the C kernels in use."""

import os
import shutil
import sys

import pytest

from napari_sizeloss import native_op, native_prelu

HAS_CXX = sys.platform.startswith("linux") and any(
    shutil.which(c) for c in (os.environ.get("CXX") or "c++", "c++", "g++")
) and native_prelu.load() is not None
needs_op = pytest.mark.skipif(not HAS_CXX, reason="the operator is built on Linux with a C++ compiler only")


def reload_with_a_failing_self_test(monkeypatch, self_test: str, message: str) -> None:
    """Load the cached operator library again as a fresh process would, with ``native_op.<self_test>`` failing.

    The operators are unset first and ``monkeypatch`` restores all of it after the test.
    """
    def failing(op):
        raise RuntimeError(message)

    monkeypatch.setattr(native_op, self_test, failing)
    for name in ("OP", "BN_PRELU", "SUM_PRELU"):
        monkeypatch.setattr(native_op, name, None)
    monkeypatch.setattr(native_op, "_state", {"tried": True, "status": "test", "thread": None})
    native_op._load(native_op._library_path(native_op._compiler()), how="cached")  # the loaded library is reused
