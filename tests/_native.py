"""What the C++ operator tests need: a Linux machine with a C++ compiler and the C kernels in use."""

import os
import shutil
import sys

import pytest

from napari_sizeloss import native_prelu

HAS_CXX = sys.platform.startswith("linux") and any(
    shutil.which(c) for c in (os.environ.get("CXX") or "c++", "c++", "g++")
) and native_prelu.load() is not None
needs_op = pytest.mark.skipif(not HAS_CXX, reason="the operator is built on Linux with a C++ compiler only")
