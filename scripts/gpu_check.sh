#!/usr/bin/env bash
# The GPU checks and figures of the speed issue in one run on a lent GPU machine.
#
# From the device tool, in the repository root (nothing to carry):
#     run(command="bash scripts/gpu_check.sh", timeout_s=540)   # parts: 120 + 60 + 300 s at most
# It uses that machine's python3 and its CUDA build of torch and installs
# nothing: the core paths run here need neither nibabel nor napari, which the
# machine lacks. Everything it prints also goes to $OUT (or /tmp/gpu_check),
# which the device tool brings back. Budget: about 1 minute of tests and
# 3-6 minutes of bench; each part has its own timeout so that one overrun
# still leaves the others' output.
#
#   1. the GPU and torch;
#   2. tests/test_cuda.py (a training step reads back once and trains under
#      mixed precision; float32 steps equal the CPU's; prediction agrees)
#      and the device and bench tests;
#   3. how many synchronisations a training step makes (torch's sync debug
#      mode: the one read-back, plus any host-to-device copy that waits);
#   4. napari-sizeloss bench --json --device cuda (the issue's GPU targets:
#      <= 2 ms per 256x256 step, >= 2,000 images/s interactive).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"

python3 -c "import torch, platform; print('torch', torch.__version__, 'python', platform.python_version(),
  'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')" \
  2>&1 | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/env.txt"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_device.py tests/test_bench.py \
  2>&1 | tee "$OUT/tests.txt"

timeout 60 python3 - <<'EOF' 2>&1 | tee "$OUT/syncs.txt"
import warnings
import torch
from napari_sizeloss.demo import make_demo_case
from napari_sizeloss.trainer import TrainConfig, TrainingSession

case = make_demo_case(0)
config = TrainConfig.interactive(steps=20, device="cuda", preview_every=0, seed=0)
session = TrainingSession(case.image, case.seeds, case.bounds, spacing=case.phantom.spacing, config=config)
events = session.run()
for _ in range(5):
    next(events)  # warm-up: cuDNN's choices, the caching allocator
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(5):
        next(events)
torch.cuda.set_sync_debug_mode("default")
messages = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
print(f"synchronising CUDA calls in 5 training steps: {len(messages)}")
for m in sorted(set(messages)):
    print(f"  {messages.count(m)} x {m}")
EOF

timeout 300 python3 -c "import sys; from napari_sizeloss.cli import main; sys.exit(main(sys.argv[1:]))" \
  bench --json --device cuda --threads 4 2>&1 | tee "$OUT/bench_cuda.txt"
