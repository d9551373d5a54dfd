"""The accelerator check: `tests/bench/gpu_check.sh` runs each module here as one guarded step.

Every step is a separate process (`python -m tests.bench.gpu_check.<step> --out FILE`), so a CUDA
error, an out-of-memory kill or a hang in one step costs only that step; `report` merges what the
steps wrote into the one JSON line the script ends with.
"""
