#!/usr/bin/env bash
# Everything GPU-only, measured in one call of under 8 minutes on a single-GPU machine. The
# parts (bench/device_probe.py PART, each writing OUT_DIR/PART.json and OUT_DIR/PART.txt) run in
# this order, each behind its own `timeout`, all within BUDGET_S (default 450 s) in total:
#   env        torch, CUDA, cuDNN, GPU, memory, TF32 flags (bench/device_env.py)
#   gpu-tests  pytest -m gpu                                                          (40 s)
#   pair       a pack of N = 2 against the same two trials stepped separately         (40 s)
#   convs      our conv shapes, grouped over N = 8 members against a loop of 8 convs,
#              forward + backward, fp32 / TF32 / bf16                                 (60 s)
#   curve      t(N) and peak memory, N = 1, 2, 4, 8, 16, 32 (48, 64 if time and memory
#              allow)                                                                 (80 s)
#   procs      one trial alone against 4 processes of one trial at 1/4 GPU each       (60 s)
#   profile    torch.profiler at N = 16: kernels per step, top 10 kernels, GPU-busy     (40 s)
#   calibrate  the --pack auto calibration (sweeps.calibrate) of the CIFAR kind        (60 s)
#   train      python -m qimera_core.train, CIFAR-10 ResNet-20 4w4a, 2,000 steps       (150 s)
#   synthesis  ZeroQ's pixel optimisation, ResNet-18 at 224, 4 seeds lone vs packed
#              (bench/synthesis.py, 20 iterations of batch 64)                      (40 s)
#   compile    last: the packed step at N = 8 under torch.compile against eager        (90 s)
# (the seconds are each part's cap; a part gets less when the total budget runs short, and is
# skipped, saying so, with under 20 s left). All use the cifar10-resnet20-4w4a preset at batch
# 200 per member with random teacher weights and synthetic eval data (nothing is downloaded);
# `train` uses the akamaster ResNet-20 and the first 1000 CIFAR-10 test images instead when DATA
# holds resnet20_cifar10_akamaster.th and cifar10-test-first1000.npz. Then OUT_DIR/summary.txt
# (a table) and OUT_DIR/device_check.json (every part, its exit status and seconds).
# Without CUDA it stops after env, writing device_check.json and summary.txt that say why,
# and exits 0. Usage, from anywhere, with the project installed:
#   [DATA=../shared/data] bash bench/device_check.sh [OUT_DIR]    # OUT_DIR: $OUT if set, else
#                                                                 # the argument, else /tmp/...
#   DEVICE=cpu QUICK=1 CAP_SCALE=4 bash bench/device_check.sh DIR   # a rehearsal of every
#       part on a CPU, tiny sizes: the logic, not the speed (CAP_SCALE multiplies the caps and
#       the default budget)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-${1:-/tmp/qimera-device-check}}
data=${DATA:-$([ -d shared/data ] && echo shared/data || echo ../shared/data)}
device=${DEVICE:-cuda}
quick=(); [ -n "${QUICK:-}" ] && quick=(--quick)
scale=${CAP_SCALE:-1}                    # the caps x this (a CPU rehearsal needs more)
budget=${BUDGET_S:-$((450 * scale))}
deadline=$((SECONDS + budget))
mkdir -p "$out"
rm -f "$out/parts.jsonl"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log() { printf '\n=== %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }
record() {   # part rc seconds why
  printf '{"part": "%s", "rc": %s, "seconds": %s, "why": "%s"}\n' "$1" "$2" "$3" "$4" \
      >> "$out/parts.jsonl"
}

# part NAME CAP_S COMMAND...: run COMMAND behind `timeout` (CAP_S or what the budget has left),
# its output in OUT_DIR/NAME.txt, its exit status and seconds in OUT_DIR/parts.jsonl.
part() {
  local name=$1 cap=$2; shift 2
  local left=$((deadline - SECONDS - 10))     # 10 s kept for the summary
  if [ "$left" -lt 20 ]; then
    log "$name: skipped, ${left} s left of the ${budget} s budget"
    record "$name" null 0 "skipped: under 20 s left of the ${budget} s budget"
    return
  fi
  cap=$((cap * scale))
  [ "$cap" -gt "$left" ] && cap=$left
  log "$name (timeout ${cap} s)"
  local t0=$SECONDS
  timeout -k 5 "$cap" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt"
  local why=""
  case $rc in
    0) ;;
    124|137) why="timed out after ${cap} s"
             [ -f "$out/$name.json" ] && why="$why (what it measured before is in $name.json)" ;;
    *) why="failed with exit status $rc (see $name.txt)" ;;
  esac
  record "$name" "$rc" $((SECONDS - t0)) "$why"
}

log "environment"
"$py" bench/device_env.py "$out/env.json"
rc=$?
if [ "$rc" = 3 ] && [ "$device" = cuda ]; then   # no CUDA: say why, write the JSON and summary
  "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print('skipped:', d['skipped'])" \
      "$out/env.json" | tee "$out/summary.txt"
  cp "$out/env.json" "$out/device_check.json"
  exit 0
elif [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
  echo "bench/device_env.py failed ($rc)"; exit 2
fi

probe=("$py" bench/device_probe.py)
opts=(--device "$device" --out "$out" "${quick[@]}")

if [ "$device" = cuda ]; then
  part gpu-tests 40 "$py" -m pytest -q -m gpu tests
fi
part pair 40 "${probe[@]}" pair "${opts[@]}"
part convs 60 "${probe[@]}" convs "${opts[@]}" --sizes 8
part curve 80 "${probe[@]}" curve "${opts[@]}" --budget-s 60
part procs 60 "${probe[@]}" procs "${opts[@]}" --procs 4 --steps 40
part profile 40 "${probe[@]}" profile "${opts[@]}" --n 16
part calibrate 60 "${probe[@]}" calibrate "${opts[@]}" --budget-s 35
part train 150 "${probe[@]}" train "${opts[@]}" --data "$data"
if [ -n "${QUICK:-}" ]; then synth=(--teacher tiny_resnet --iters 2 --batch-size 4 --seeds 2)
else synth=(--teacher resnet18 --iters 20 --batch-size 64 --seeds 4); fi
part synthesis 40 "$py" bench/synthesis.py --device "$device" "${synth[@]}" \
    --json "$out/synthesis.json"
part compile 90 "${probe[@]}" compile "${opts[@]}" --n 8

log "summary"
"$py" bench/device_probe.py summary --out "$out"
echo "(in $out: summary.txt, device_check.json, and each part's .json and .txt; ${SECONDS} s)"
