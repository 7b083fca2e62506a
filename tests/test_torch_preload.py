"""torch_preload: torch's libraries loaded ahead of the import, which then works as usual."""

import json
import subprocess
import sys

import pytest

from napari_sizeloss import torch_preload
from napari_sizeloss.torch_preload import TORCH_LIBRARIES, preload_torch_libraries

FRESH_PROCESS = r"""
import json, sys
from napari_sizeloss.torch_preload import preload_torch_libraries

def mapped():
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-1] for line in f if "libtorch_cpu.so" in line or "libc10.so" in line})

loaded = preload_torch_libraries()
before = mapped()
torch_imported_by_preload = "torch" in sys.modules
import torch
after = mapped()
x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
print(json.dumps({"loaded": loaded, "before": before, "after": after,
                  "torch_imported_by_preload": torch_imported_by_preload,
                  "sum": float(x.sum()), "matmul": (x @ x.T).tolist(),
                  "again": preload_torch_libraries()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload is Linux only")
def test_a_fresh_process_loads_the_libraries_first_and_the_import_reuses_them():
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["loaded"] is True
    assert not result["torch_imported_by_preload"]  # only the shared libraries, not the Python package
    assert {p.rsplit("/", 1)[-1] for p in result["before"]} == set(TORCH_LIBRARIES)
    assert result["after"] == result["before"]  # the import found them: no second copy from elsewhere
    assert result["sum"] == 15.0 and result["matmul"] == [[5.0, 14.0], [14.0, 50.0]]
    assert result["again"] is False  # torch imported: nothing to do


def test_nothing_is_done_once_torch_is_imported():
    import torch  # noqa: F401

    assert preload_torch_libraries() is False


def test_a_missing_or_broken_library_is_a_quiet_no(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as if not imported yet (restored afterwards)
    monkeypatch.setattr(torch_preload, "_torch_library_dir", lambda: tmp_path)
    assert preload_torch_libraries() is False  # no files there
    for name in TORCH_LIBRARIES:
        (tmp_path / name).write_bytes(b"not an ELF file")
    assert preload_torch_libraries() is False  # dlopen refuses them; nothing raised
    monkeypatch.setattr(torch_preload, "_torch_library_dir", lambda: None)
    assert preload_torch_libraries() is False  # torch not installed


def test_other_platforms_leave_it_to_the_import(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert preload_torch_libraries() is False
