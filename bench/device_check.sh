#!/usr/bin/env bash
# Everything GPU-only, measured in one call of under 8 minutes on a single-GPU machine:
#   1. the GPU tests (pytest -m gpu);
#   2. the GPU part of the pack benchmark: CIFAR ResNet-20 4w4a, batch 200, packs of 1..16
#      (trials/h, ratio to one trial, peak memory per member), and 4 single-trial processes
#      sharing the GPU (what --gpus-per-trial 0.25 does), for comparison;
#   3. the --pack auto calibration (sweeps.calibrate) of the CIFAR ResNet-20 kind: its table and
#      the size it chooses (OUT_DIR/calibration.json);
#   4. a CIFAR-10 run of 2,000 steps with the akamaster ResNet-20 teacher (teacher and final
#      top-1 on the first 1000 test images).
# First the environment (bench/device_env.py -> OUT_DIR/env.json: torch, CUDA, cuDNN, GPU,
# memory, TF32 flags); on a machine without CUDA it stops there, writing device_check.json and
# summary.txt that say why, and exits 0. Then a summary. Usage, from the repository root, with the project installed:
#   DATA=../shared/data bash bench/device_check.sh [OUT_DIR]
# DATA holds resnet20_cifar10_akamaster.th and cifar10-test-first1000.npz (see ../shared/data);
# without them step 4 is skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/qimera-device-check}}
data=${DATA:-../shared/data}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log() { printf '\n=== %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

log "environment"
"$py" bench/device_env.py "$out/env.json"
rc=$?
if [ "$rc" = 3 ]; then       # no CUDA: say why, write the JSON and the summary, exit cleanly
  "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print('skipped:', d['skipped'])" \
      "$out/env.json" | tee "$out/summary.txt"
  cp "$out/env.json" "$out/device_check.json"
  exit 0
elif [ "$rc" != 0 ]; then
  echo "bench/device_env.py failed ($rc)"; exit 2
fi

log "GPU tests"
timeout 120 "$py" -m pytest -q -m gpu tests 2>&1 | tail -n 15 | tee "$out/gpu-tests.txt"

log "packs on the GPU: CIFAR ResNet-20 4w4a, batch 200"
timeout 150 "$py" bench/pack_throughput.py direct --device cuda --shape cifar \
    --sizes 1,2,4,8,16 --steps 8 2>&1 | tee "$out/pack-gpu.txt"

log "4 processes of one trial sharing the GPU"
timeout 120 "$py" bench/pack_throughput.py fractional --procs 4 --steps 40 2>&1 \
    | tee "$out/fractional-gpu.txt"

log "the --pack auto calibration's choice: CIFAR ResNet-20 4w4a, batch 200, random teacher"
timeout 150 "$py" -c "
import json, sys
from qimera_core.config import build
from sweeps import calibrate
cfg = build('cifar10-resnet20-4w4a', teacher_weights='random', device='cuda')
cal = calibrate.calibrate_local(cfg, use_cache=False)
print(cal.table())
json.dump(cal.to_json(), open(sys.argv[1], 'w'), indent=1)
" "$out/calibration.json" 2>&1 | tee "$out/calibration.txt"

log "CIFAR-10, akamaster ResNet-20 teacher, 2,000 steps"
if [ -f "$data/resnet20_cifar10_akamaster.th" ] && [ -f "$data/cifar10-test-first1000.npz" ]; then
  rm -rf "$out/cifar10-run"
  timeout 200 "$py" -m qimera_core.train --preset cifar10-resnet20-4w4a \
      --teacher resnet20_cifar10_a --teacher-weights "$data/resnet20_cifar10_akamaster.th" \
      --eval-data "npz:$data/cifar10-test-first1000.npz" --device cuda \
      --epochs 10 --steps-per-epoch 200 --warmup-epochs 2 --act-range-epochs 2 \
      --lr-milestones 8 --out "$out/cifar10-run" 2>&1 | tail -n 4 | tee "$out/cifar10-run.txt"
else
  echo "skipped: $data lacks the akamaster checkpoint or the CIFAR-10 file" | tee "$out/cifar10-run.txt"
fi

log "summary"
grep -hE "passed|failed|skipped" "$out/gpu-tests.txt" | tail -n 1
grep -hE "^ +[0-9]+ " "$out/pack-gpu.txt"
tail -n 1 "$out/fractional-gpu.txt"
head -n 1 "$out/calibration.txt"
grep -h "teacher top-1" "$out/cifar10-run.txt" || tail -n 1 "$out/cifar10-run.txt"
