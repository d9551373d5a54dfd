"""Step 1's report: what the check runs on (versions, the GPU, nvidia-smi), as JSON."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("torch", "torchvision", "transformers", "cn_clip", "lmdb", "numpy", "pydantic", "tokenizers", "triton",
            "flash_attn")


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict:
    if shutil.which("nvidia-smi") is None:
        return {"present": False}
    full = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    print(full.stdout, flush=True)  # the whole table for the log
    query = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=60)
    return {"present": True, "rc": full.returncode, "gpus": [line.strip() for line in query.stdout.splitlines()]}


def cuda_details() -> dict:
    import torch

    details: dict = {"torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        details["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                          "memory_gib": round(props.total_memory / 2**30, 1),
                          "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count()}
        details["cudnn"] = torch.backends.cudnn.version()
        details["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", default="unknown", help="how the environment was made")
    parser.add_argument("--seconds", type=float, default=None, help="time the set-up took")
    args = parser.parse_args()
    result: dict = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
                    "environment": args.mode, "setup_seconds": args.seconds,
                    "packages": {p: version(p.replace("_", "-")) or version(p) for p in PACKAGES},
                    "nvidia_smi": nvidia_smi()}
    try:
        import services.trainer.train.run  # noqa: F401 - the trainer imports in this environment
        import cn_clip.clip.model  # noqa: F401
        result["imports_ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported, the steps will fail with the details
        result["imports_ok"] = False
        result["import_error"] = f"{type(exc).__name__}: {exc}"
    try:
        result |= cuda_details()
    except Exception as exc:  # noqa: BLE001
        result["cuda_error"] = f"{type(exc).__name__}: {exc}"
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
