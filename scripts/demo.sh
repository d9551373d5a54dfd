#!/usr/bin/env bash
# The main demo, on this machine and CPU only: installs what is missing, makes a small synthetic
# data set (MUGE format + LMDB) under the data root, starts the whole stack (Redis, the demo
# shop, a crawler, the job runner, the control service), trains a tiny model offline and online
# (learning from the crawler's pictures of each validation query) through the control API,
# predicts with both and with test-time online learning, prints recall on seen and unseen
# concepts side by side, and stops the stack.
#
# Installs and the stack's start and stop write to a log file (one line per stage here); the
# jobs' progress is printed as it comes.
#
# Settings: CNCLIP_DATA_ROOT (./data), CNCLIP_CONTROL_PORT (8000), CNCLIP_SHOP_PORT (8600),
# DEMO_STEPS (200). Keep the stack running afterwards with DEMO_KEEP=1 (stop it with
# `bash scripts/stack.sh down`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CNCLIP_DATA_ROOT=$(realpath -m "${CNCLIP_DATA_ROOT:-./data}")
DATASET=datasets/demo
PY=.venv/bin/python
LOG=$CNCLIP_DATA_ROOT/demo.log
mkdir -p "$CNCLIP_DATA_ROOT"
: > "$LOG"
STAGE=0
STAGES=3  # install, data set, stack up; stack down too unless it is kept
[ "${DEMO_KEEP:-0}" = "1" ] || STAGES=4

# stage TITLE COMMAND...: runs COMMAND with its output in the log, says how it went in one line.
stage() {
  local title=$1; shift
  STAGE=$((STAGE + 1))
  local started=$SECONDS
  printf '[%d/%d] %s ... ' "$STAGE" "$STAGES" "$title"
  echo "== [$STAGE/$STAGES] $title: $*" >> "$LOG"
  if "$@" >> "$LOG" 2>&1; then
    echo "done ($((SECONDS - started)) s)"
  else
    local rc=$?
    echo "FAILED (exit $rc)"
    echo "---- last lines of $LOG ----" >&2
    tail -n 25 "$LOG" >&2
    exit "$rc"
  fi
}

make_dataset() {
  if [ ! -f "$CNCLIP_DATA_ROOT/$DATASET/test_texts.jsonl" ]; then
    $PY -m services.trainer.cli make-synthetic --out "$CNCLIP_DATA_ROOT/$DATASET" \
        --n-train 512 --n-valid 64 --n-test 64 --image-size 64
  fi
  if [ ! -d "$CNCLIP_DATA_ROOT/$DATASET/lmdb/test" ]; then
    $PY -m services.trainer.cli build-lmdb --data-dir "$CNCLIP_DATA_ROOT/$DATASET" --splits train,valid,test
  fi
}

stop_stack() {
  echo
  stage "stopping the stack" bash scripts/stack.sh down
}

start_stack() {
  stage "starting the stack (Redis, shop, crawler, job runner, search, control service)" bash scripts/stack.sh up
  if [ "${DEMO_KEEP:-0}" != "1" ]; then
    trap stop_stack EXIT
  fi
  ENV_FILE=$(bash scripts/stack.sh env-file)
  set -a
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  set +a
  BASE_URL=http://127.0.0.1:$CNCLIP_CONTROL_PORT
  export CNCLIP_CONTROL_URL=$BASE_URL  # for cnclip jobs (the token is in the environment too)
}

MODEL='"vision_model": "tiny", "text_model": "tiny", "precision": "fp32", "device": "cpu"'
JOBS=()  # "label job-id" of every job run, for the closing summary

# Each run: submit a job with the command-line client, follow it to its end (progress, then a
# short summary), remember it for the closing words.
CNCLIP=.venv/bin/cnclip
run_job() {
  local label=$1 kind=$2 spec=$3 job
  echo
  echo "== $label"
  job=$($CNCLIP jobs submit "$kind" - --json <<< "$spec" | $PY -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  echo "   job $job: $BASE_URL/status?job=$job"
  JOBS+=("$label|$job")
  $CNCLIP jobs logs "$job" --follow
  LAST_JOB=$job
}

# TRAIN_SPEC NAME ONLINE: the demo's training job, offline or online (live: the crawler pool).
train_spec() {
  cat <<JSON
{"name": "$1", "train_data": "$DATASET/lmdb/train", "val_data": "$DATASET/lmdb/valid",
 "max_steps": ${DEMO_STEPS:-200}, "batch_size": 32, "valid_batch_size": 32, "lr": 0.003, "wd": 0.01, "warmup": 10,
 "valid_step_interval": 50, "log_interval": 10, "num_workers": 0, "valid_num_workers": 0,
 "online": "$2", "online_images": 5, "report_to": "tensorboard", $MODEL}
JSON
}
predict_spec() {  # CHECKPOINT ONLINE [INDEX]: INDEX keeps the gallery embeddings for /search
  local index=""
  [ -z "${3:-}" ] || index="\"save_index\": \"$3\","
  cat <<JSON
{"mode": "single", "image_data": "$DATASET/lmdb/test", "text_data": "$DATASET/test_texts.jsonl",
 "resume": "$1", "online": "$2", "online_max_epochs": 5, "lr": 0.001,
 "online_replay_data": "$DATASET/lmdb/train", $index $MODEL}
JSON
}
STAMP=$(date +%Y%m%d-%H%M%S)
PREDICTIONS=()  # "label=predictions file" of every prediction, for the comparison
run_training() {  # NAME ONLINE
  run_job "training $1 (online $2)" train "$(train_spec "$1" "$2")"
}
PREDICTION_JOBS=()  # job ids of the offline and the online model's predictions, for the compare page
run_prediction() {  # LABEL RUN ONLINE [INDEX]
  run_job "prediction: $1" predict "$(predict_spec "experiments/$2/checkpoints/epoch_latest.pt" "$3" "${4:-}")"
  [ -z "${4:-}" ] || PREDICTION_JOBS+=("$LAST_JOB")
  PREDICTIONS+=("$1=$CNCLIP_DATA_ROOT/experiments/results/${LAST_JOB}_predictions.jsonl")
}
log_in_crawler() {
  echo
  echo "== crawler login: the crawler waits at the shop's QR code ($BASE_URL/login)."
  echo "   Standing in for the phone, the demo reads that QR code and confirms it at the shop."
  $PY scripts/demo_client.py scan
}
compare_runs() {
  echo
  echo "== test recall by concept (unseen: a colour or category never in the training set)"
  $PY scripts/demo_client.py compare "$CNCLIP_DATA_ROOT/$DATASET" "${PREDICTIONS[@]}"
}
show_metrics() {
  echo
  echo "== service metrics (Prometheus, $BASE_URL/metrics)"
  $PY - <<PYCODE
import httpx, os
text = httpx.get(f"http://127.0.0.1:{os.environ['CNCLIP_CONTROL_PORT']}/metrics",
                 headers={"Authorization": f"Bearer {os.environ['CNCLIP_CONTROL_TOKEN']}"}).text
for line in text.splitlines():
    if line.startswith(("cnclip_jobs", "cnclip_crawl", "cnclip_crawler_ranks_logged_in")):
        print("  " + line)
PYCODE
}

closing_words() {
  echo
  echo "== what to open"
  if [ "${DEMO_KEEP:-0}" = "1" ]; then
    echo "   status:        $BASE_URL/status"
    for entry in "${JOBS[@]}"; do echo "   ${entry%%|*}: $BASE_URL/status?job=${entry#*|}"; done
    echo "   compare runs:  $BASE_URL/status?compare=$(for e in "${JOBS[@]}"; do case $e in training*) printf '%s,' "${e#*|}";; esac; done)"
    echo "   crawler login: $BASE_URL/login"
    echo "   from a shell:  .venv/bin/cnclip jobs list   (also: show, logs --follow, submit, cancel)"
    echo "   what online learning changed, query by query (offline above online):"
    echo "     $BASE_URL/jobs/${PREDICTION_JOBS[0]}/results?compare=${PREDICTION_JOBS[1]}&filter=changed&sort=change"
    echo "   search both models side by side:"
    echo "     $BASE_URL/search?a=demo-$STAMP-offline&b=demo-$STAMP-online"
    echo "   API docs:      $BASE_URL/docs"
    echo "   sign in with the token: CNCLIP_CONTROL_TOKEN in $ENV_FILE"
    echo "   stop it all:   bash scripts/stack.sh down"
  else
    echo "   The stack stops now. To look around afterwards, run DEMO_KEEP=1 bash scripts/demo.sh"
    echo "   ($BASE_URL/status and /login, token in $ENV_FILE)."
  fi
  echo "   Results: $CNCLIP_DATA_ROOT/experiments (checkpoints, predictions); install and stack log: $LOG"
  echo "   Both training runs in TensorBoard: .venv/bin/tensorboard --logdir $CNCLIP_DATA_ROOT/experiments"
}

echo "Online-CNCLIP demo: a tiny model trained and used on this machine's CPU (log: $LOG)"
stage "installing system packages and the Python environment (first run: several minutes)" \
    bash scripts/bootstrap.sh
stage "making a synthetic data set in $CNCLIP_DATA_ROOT/$DATASET" make_dataset
start_stack
run_training "demo-$STAMP-offline" off
log_in_crawler
run_training "demo-$STAMP-online" live
run_prediction "offline" "demo-$STAMP-offline" off "demo-$STAMP-offline"
run_prediction "online" "demo-$STAMP-online" off "demo-$STAMP-online"
run_prediction "offline + test-time online (5 passes)" "demo-$STAMP-offline" live
compare_runs
show_metrics
closing_words
