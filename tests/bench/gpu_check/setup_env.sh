# Step 1 of the accelerator check, sourced by tests/bench/gpu_check.sh from the repository root.
# Sets PY (the interpreter every step runs with) and ENV_MODE (how it was made), the quickest
# way this machine allows:
#   1. GPU_CHECK_VENV=DIR: that environment, as it is.
#   2. .venv (as scripts/bootstrap.sh makes it) when it already imports what the check needs.
#   3. A Python that holds PyTorch already (${PYTHON:-python3}; a CUDA machine's image): only
#      requirements.txt's packages are added, into an overlay folder put first on PYTHONPATH,
#      from .whl/ when it holds wheels (fetch_wheels.sh; no network needed), else from the index.
#   4. Otherwise a new .venv as bootstrap makes it: its torch pins, the project's trainer and test
#      extras, cn-clip without its dependencies (no apt: the check needs no system packages).
GPU_CHECK_IMPORTS="import torch, torchvision, transformers, lmdb, cn_clip, pydantic_settings"
GPU_CHECK_WHEELS=${GPU_CHECK_WHEELS:-.whl}
GPU_CHECK_OVERLAY=${GPU_CHECK_OVERLAY:-/tmp/cnclip-gpu-check-site}
gpu_check_base_py=${PYTHON:-python3}

if [ -n "${GPU_CHECK_VENV:-}" ]; then
  PY=$GPU_CHECK_VENV/bin/python
  ENV_MODE="given environment $GPU_CHECK_VENV"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "$GPU_CHECK_IMPORTS" 2>/dev/null; then
  PY=.venv/bin/python
  ENV_MODE="existing .venv"
elif "$gpu_check_base_py" -c "import torch" 2>/dev/null; then
  PY=$(command -v "$gpu_check_base_py")
  if compgen -G "$GPU_CHECK_WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$GPU_CHECK_OVERLAY" \
      "$GPU_CHECK_WHEELS"/*.whl
    ENV_MODE="this machine's torch, wheels from $GPU_CHECK_WHEELS in $GPU_CHECK_OVERLAY"
  else
    "$PY" -m pip install -q --no-deps --no-compile --upgrade --target "$GPU_CHECK_OVERLAY" \
      -r tests/bench/gpu_check/requirements.txt
    ENV_MODE="this machine's torch, index packages in $GPU_CHECK_OVERLAY"
  fi
  export PYTHONPATH="$GPU_CHECK_OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
else
  "$gpu_check_base_py" -m venv .venv
  PY=.venv/bin/python
  # The pins bootstrap uses, read from it so they have one home.
  read -r -a gpu_check_torch_pins <<<"$(grep -oE '"(torch|torchvision)==[^"]+"' scripts/bootstrap.sh | tr -d '"' | tr '\n' ' ')"
  gpu_check_cnclip_pin=$(grep -oE '"cn-clip==[^"]+"' scripts/bootstrap.sh | tr -d '"')
  "$PY" -m pip install -q "${gpu_check_torch_pins[@]}"
  "$PY" -m pip install -q -e ".[trainer,test]"
  "$PY" -m pip install -q --no-deps "$gpu_check_cnclip_pin"
  ENV_MODE="new .venv from the package index"
fi
