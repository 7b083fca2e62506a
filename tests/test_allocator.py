"""Allocator tuning: freed tensor memory is reused instead of faulted in afresh.

Each case runs in a fresh interpreter: glibc's settings are process-wide.
"""

import json
import os
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt thresholds are glibc's",
)

_PROBE = r"""
import json, resource
from napari_sizeloss.allocator import tune_allocator, allocator_tuned
import torch
tuned = tune_allocator()
again = tune_allocator()

def round_of_activations():
    # 12 activations of 3 MiB alive together, then all freed: a forward pass in small.
    ts = [torch.ones(3 << 18) for _ in range(12)]
    return float(sum(t[0] for t in ts))

round_of_activations()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_of_activations()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({"tuned": tuned, "again": again, "state": allocator_tuned(), "faults": faults}))
"""


def _probe(switch: str) -> dict:
    env = dict(os.environ, NAPARI_SIZELOSS_TUNE_MALLOC=switch, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuning_stops_fresh_page_faults_for_reallocated_activations():
    default = _probe("0")
    tuned = _probe("1")
    assert default["tuned"] is False and default["state"] is False
    assert tuned["tuned"] is True and tuned["again"] is True and tuned["state"] is True
    pages_per_round = 12 * (3 << 20) // 4096
    # glibc as it comes trims the freed 36 MiB and faults it in again every round...
    assert default["faults"] > 2 * pages_per_round
    # ...tuned, the same memory is reused (a few pages still come and go).
    assert tuned["faults"] < default["faults"] / 8


def test_switched_off_by_the_environment_variable():
    for value in ("0", "off", "False", " no "):
        assert _probe(value)["tuned"] is False
