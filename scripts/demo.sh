#!/usr/bin/env bash
# The main demo, on this machine and CPU only: installs what is missing, makes a small synthetic
# data set (MUGE format + LMDB) under the data root, starts the whole stack (Redis, the demo
# shop, a crawler, the job runner, the control service), trains a tiny model and predicts with
# it through the control API while printing progress, shows the metrics, and stops the stack.
#
# Settings: CNCLIP_DATA_ROOT (./data), CNCLIP_CONTROL_PORT (8000), CNCLIP_SHOP_PORT (8600),
# DEMO_STEPS (200). Keep the stack running afterwards with DEMO_KEEP=1 (stop it with
# `bash scripts/stack.sh down`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh

export CNCLIP_DATA_ROOT=$(realpath -m "${CNCLIP_DATA_ROOT:-./data}")
DATASET=datasets/demo
PY=.venv/bin/python

if [ ! -f "$CNCLIP_DATA_ROOT/$DATASET/test_texts.jsonl" ]; then
  echo "== making a synthetic data set in $CNCLIP_DATA_ROOT/$DATASET"
  $PY -m services.trainer.cli make-synthetic --out "$CNCLIP_DATA_ROOT/$DATASET" \
      --n-train 512 --n-valid 64 --n-test 64 --image-size 64
fi
if [ ! -d "$CNCLIP_DATA_ROOT/$DATASET/lmdb/test" ]; then
  echo "== building its LMDB"
  $PY -m services.trainer.cli build-lmdb --data-dir "$CNCLIP_DATA_ROOT/$DATASET" --splits train,valid,test
fi

echo "== starting the stack"
bash scripts/stack.sh up
if [ "${DEMO_KEEP:-0}" != "1" ]; then
  trap 'echo "== stopping the stack"; bash scripts/stack.sh down' EXIT
fi
ENV_FILE=$(bash scripts/stack.sh env-file)
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a
echo "   control: http://127.0.0.1:$CNCLIP_CONTROL_PORT/status (token in $ENV_FILE)"

RUN_NAME=demo-$(date +%Y%m%d-%H%M%S)
MODEL='"vision_model": "tiny", "text_model": "tiny", "precision": "fp32", "device": "cpu"'
TRAIN_SPEC=$(cat <<JSON
{"name": "$RUN_NAME", "train_data": "$DATASET/lmdb/train", "val_data": "$DATASET/lmdb/valid",
 "max_steps": ${DEMO_STEPS:-200}, "batch_size": 32, "valid_batch_size": 32, "lr": 0.003, "wd": 0.01, "warmup": 10,
 "valid_step_interval": 50, "log_interval": 10, "num_workers": 0, "valid_num_workers": 0, $MODEL}
JSON
)
echo "== training job"
TRAIN_JOB=$($PY scripts/demo_client.py train "$TRAIN_SPEC")
echo "   job $TRAIN_JOB"
$PY scripts/demo_client.py follow "$TRAIN_JOB"

PREDICT_SPEC=$(cat <<JSON
{"mode": "single", "image_data": "$DATASET/lmdb/test", "text_data": "$DATASET/test_texts.jsonl",
 "resume": "experiments/$RUN_NAME/checkpoints/epoch_latest.pt", $MODEL}
JSON
)
echo "== prediction job"
PREDICT_JOB=$($PY scripts/demo_client.py predict "$PREDICT_SPEC")
echo "   job $PREDICT_JOB"
$PY scripts/demo_client.py follow "$PREDICT_JOB"

echo "== test recall by concept (chance R@1 is about 1 in the gallery size)"
$PY scripts/demo_client.py concepts "$CNCLIP_DATA_ROOT/$DATASET" \
    "$CNCLIP_DATA_ROOT/experiments/results/${PREDICT_JOB}_predictions.jsonl"

echo "== metrics (Prometheus)"
$PY - <<PYCODE
import httpx, os
text = httpx.get(f"http://127.0.0.1:{os.environ['CNCLIP_CONTROL_PORT']}/metrics",
                 headers={"Authorization": f"Bearer {os.environ['CNCLIP_CONTROL_TOKEN']}"}).text
for line in text.splitlines():
    if line.startswith(("cnclip_jobs", "cnclip_crawl", "cnclip_crawler_ranks_logged_in")):
        print("  " + line)
PYCODE
