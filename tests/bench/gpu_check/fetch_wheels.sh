#!/usr/bin/env bash
# Downloads requirements.txt's packages as CPython 3.12 x86-64 wheels into .whl/ (git-ignored; or
# GPU_CHECK_WHEELS), so a GPU machine that has PyTorch but no network can run the check: carry
# .whl along with the tree.
# GPU_CHECK_WHEEL_PYTHON picks another Python version (the GPU machine's python3 is 3.12).
set -euo pipefail
cd "$(dirname "$0")/../../.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_CHECK_WHEEL_PYTHON:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d "${GPU_CHECK_WHEELS:-.whl}" -r tests/bench/gpu_check/requirements.txt 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
du -sh "${GPU_CHECK_WHEELS:-.whl}"
