#!/usr/bin/env bash
# The accelerator check: set-up, then fidelity on the device, training throughput and MFU, one
# torchrun training job, and the chunked top-k (tests/bench/gpu_check/*.py, one process each).
#
#   bash tests/bench/gpu_check.sh
#
# On a CUDA machine it runs at full size (ViT-B-16 + RoBERTa-base, 1M x 50k top-k) in under
# 8 minutes with its set-up; on a CPU-only machine the same steps at tiny sizes. Each step has a
# time limit; one that fails records its error and the others still run. The last line of output
# is one JSON object with every figure; the exit code is 0 when every step passed.
#
# Environment: GPU_CHECK_SCALE=auto|tiny|full (auto: full with CUDA); GPU_CHECK_ONLY=STEP,... (a
# subset of fidelity,throughput,train_job,topk); GPU_CHECK_TIME_FACTOR=N (limits and budgets x N);
# GPU_CHECK_WORK=DIR (default: a new folder under /tmp); GPU_CHECK_VENV=DIR, GPU_CHECK_WHEELS=DIR,
# PYTHON (see tests/bench/gpu_check/setup_env.sh); GPU_CHECK_PEAK_TFLOPS (a GPU missing from the
# MFU table).
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
work=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$work"

step_names=(fidelity throughput train_job topk)
# GPU_CHECK_ONLY=topk,fidelity runs only those steps (e.g. again, after one failed).
only=${GPU_CHECK_ONLY:-}
selected=()
for name in "${step_names[@]}"; do
  [ -z "$only" ] || [[ ",$only," == *",$name,"* ]] && selected+=("$name")
done
for name in ${only//,/ }; do
  [[ " ${step_names[*]} " == *" $name "* ]] || {
    echo "GPU_CHECK_ONLY: unknown step '$name'; the steps are ${step_names[*]}" >&2; exit 2; }
done
# GPU_CHECK_TIME_FACTOR=2 doubles every limit and budget (a slower GPU, a rerun of one step).
factor=${GPU_CHECK_TIME_FACTOR:-1}
[[ "$factor" =~ ^[1-9][0-9]*$ ]] || { echo "GPU_CHECK_TIME_FACTOR must be a whole number >= 1" >&2; exit 2; }

echo "== set-up"
. tests/bench/gpu_check/setup_env.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -m tests.bench.gpu_check.environment --out "$work/setup.json" --mode "$ENV_MODE" \
  --seconds "$(($(date +%s) - started))" >"$work/setup.log" 2>&1
cat "$work/setup.log"
scale=$("$PY" -c "from tests.bench.gpu_check.common import resolve_scale; print(resolve_scale('${GPU_CHECK_SCALE:-auto}'))")

# Per step: time limit and time budget (s; the step starts no new measurement once its budget
# is spent). At full size the limits and the set-up add up to 8 minutes; tiny runs share slow
# CPUs, so their limits are only there to stop a hang.
declare -A limit budget
if [ "$scale" = full ]; then
  limit=([fidelity]=50 [throughput]=170 [train_job]=160 [topk]=50)
  budget=([fidelity]=30 [throughput]=110 [topk]=25)
else
  limit=([fidelity]=600 [throughput]=600 [train_job]=900 [topk]=600)
fi
for name in "${!limit[@]}"; do limit[$name]=$((limit[$name] * factor)); done
for name in "${!budget[@]}"; do budget[$name]=$((budget[$name] * factor)); done
for name in "${selected[@]}"; do
  echo "== $name ($scale, limit ${limit[$name]}s)"
  step_started=$(date +%s)
  timeout -k 10 "${limit[$name]}" "$PY" -m "tests.bench.gpu_check.$name" --scale "$scale" \
    --out "$work/$name.json" --work "$work/$name" ${budget[$name]:+--budget-s "${budget[$name]}"} \
    >"$work/$name.log" 2>&1
  rc=$?
  echo "$rc" >"$work/$name.rc"
  echo "   exit code $rc after $(($(date +%s) - step_started))s, log $work/$name.log"
done
"$PY" -m tests.bench.gpu_check.report --work "$work" --steps "$(IFS=,; echo "${selected[*]}")" --scale "$scale" \
  --started "$started"
