#!/usr/bin/env bash
# Installs what the tests need, then runs them all (real Redis, Chromium, Celery workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
