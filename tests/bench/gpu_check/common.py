"""What every step of the accelerator check shares: sizes per scale, arguments, devices, timing,
the original model built with our weights, and the GPU peak-FLOP table used for MFU."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SCALES = ("auto", "tiny", "full")


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses at one scale (one place, so the CPU run is the GPU run shrunk)."""

    vision_model: str
    text_model: str
    fidelity_batch: int
    train_batch: int  # throughput batch (the 128 at full scale)
    warmup_steps: int
    timed_steps: int
    largest_batch_cap: int  # the search for the largest batch that fits stops here
    job_train_texts: int
    job_valid_texts: int
    job_image_size: int
    job_batch: int
    job_steps: int
    job_workers: int
    topk_gallery: int
    topk_queries: int
    topk_dim: int
    topk_reference_queries: int  # queries checked against a full-matrix torch.topk


SIZES: dict[str, Sizes] = {
    # Runs on two busy CPU cores in about a minute: every path taken, nothing measured seriously.
    "tiny": Sizes(
        vision_model="tiny", text_model="tiny", fidelity_batch=4, train_batch=8, warmup_steps=1,
        timed_steps=1, largest_batch_cap=16, job_train_texts=48, job_valid_texts=12, job_image_size=64,
        job_batch=8, job_steps=6, job_workers=0, topk_gallery=20_000, topk_queries=300, topk_dim=512,
        topk_reference_queries=100,
    ),
    # ViT-B-16 + RoBERTa-base at batch 128, 1M x 50k top-k. The training job keeps to a few
    # thousand 224 px images (rendering them is CPU time) and 200 steps of 64, so it saves a
    # checkpoint (2.3 GB with the optimizer) only at a handful of epoch ends.
    "full": Sizes(
        vision_model="ViT-B-16", text_model="RoBERTa-wwm-ext-base-chinese", fidelity_batch=16, train_batch=128,
        warmup_steps=2, timed_steps=6, largest_batch_cap=4096, job_train_texts=3072, job_valid_texts=256,
        job_image_size=224, job_batch=64, job_steps=200, job_workers=8, topk_gallery=1_000_000,
        topk_queries=50_000, topk_dim=512, topk_reference_queries=2048,
    ),
}

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), matched against the CUDA
# device name; the first matching key wins, so the more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM
    ("H800", 989.4e12),
    ("A100", 312.0e12),
    ("A800", 312.0e12),
    ("L40S", 362.1e12),
    ("L4", 121.0e12),
)

CAPTIONS = [
    "红色圆形的陶瓷杯子", "蓝色条纹短袖T恤", "绿色格子图案的方形抱枕，柔软舒适，适合客厅沙发", "黄色三角形",
    "黑白波点连衣裙 夏季新款 雪纺 显瘦", "紫色星形发夹", "橙色的帆布双肩背包，大容量", "白色",
]


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=SCALES, default="auto",
                        help="tiny: small models and sizes (CPU); full: the issue's sizes; auto: full when CUDA is there")
    parser.add_argument("--out", required=True, help="JSON file this step writes its figures to")
    parser.add_argument("--work", required=True, help="folder for this step's files")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting new measurements after this many seconds")
    if extra:
        extra(parser)
    args = parser.parse_args()
    args.scale = resolve_scale(args.scale)
    limit_cpu_threads(args.scale)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    return args


def limit_cpu_threads(scale: str) -> None:
    """At the tiny scale the check shares a small CPU: one thread per process avoids oversubscription."""
    if scale == "tiny" and not torch.cuda.is_available():
        torch.set_num_threads(1)


def resolve_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "auto":
        return "full" if torch.cuda.is_available() else "tiny"
    return scale


def check_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes the CUDA caching allocator handed out since the last reset (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def peak_bf16_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where the number comes from). GPU_CHECK_PEAK_TFLOPS overrides."""
    override = os.environ.get("GPU_CHECK_PEAK_TFLOPS")
    if override:
        try:
            tflops = float(override)
        except ValueError:
            tflops = 0.0
        if not tflops > 0:
            raise ValueError(f"GPU_CHECK_PEAK_TFLOPS must be a positive number of TFLOP/s, got {override!r}")
        return tflops * 1e12, "GPU_CHECK_PEAK_TFLOPS"
    if device.type != "cuda":
        return None, "no peak for a CPU: MFU is reported for CUDA devices only"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops, f"datasheet dense bf16 for {key} (device name {name!r})"
    return None, f"no peak known for {name!r}; set GPU_CHECK_PEAK_TFLOPS"


def error_record(exc: BaseException) -> dict[str, Any]:
    """An exception as JSON: its type and message, and the last lines of its traceback."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": "".join(lines)[-1500:]}


def guarded(fn: Callable[[], Any]) -> Any:
    """fn() or, when it raises, its error record: one failing part leaves the others to run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a figure in the JSON
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return error_record(exc)


def failed(value: Any) -> bool:
    return isinstance(value, dict) and "error" in value


class Deadline:
    """The step's time budget: measurements not started before it ends are reported as skipped."""

    def __init__(self, budget_s: float | None):
        self.end = None if budget_s is None else time.monotonic() + budget_s

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, default=str), flush=True)


def paired_models(vision_model: str, text_model: str, attn_implementation: str = "sdpa", seed: int = 0):
    """(our ChineseCLIPModel, Chinese-CLIP's own CLIP) holding the same random weights, on the CPU."""
    from services.trainer.model.configs import text_tower, vision_tower
    from services.trainer.model.factory import create_model
    from services.trainer.model.keymap import transformers_to_cnclip
    from tests.fixtures_trainer import original_clip

    torch.manual_seed(seed)
    ours = create_model(vision_model, text_model, attn_implementation=attn_implementation, precision="fp32")
    theirs = original_clip(vision_tower(vision_model), text_tower(text_model))
    theirs.load_state_dict(transformers_to_cnclip(ours.state_dict(), ddp_prefix=False))
    return ours, theirs


def text_batch(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from services.trainer.tokenizer import tokenize

    input_ids, attention_mask = tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)])
    return input_ids.to(device), attention_mask.to(device)


def image_batch(batch: int, vision_model: str, device: torch.device, seed: int = 0) -> torch.Tensor:
    from services.trainer.model.configs import image_resolution

    size = image_resolution(vision_model)
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(batch, 3, size, size, device=device, generator=generator)


def autocast_for(precision: str, device: torch.device):
    """The autocast the trainer uses for a precision (services/trainer/engine/precision.py decides it
    for training, online steps and prediction alike)."""
    from services.trainer.engine.precision import autocast

    return autocast(precision, device)


def grad_scaler_for(precision: str, device: torch.device):
    """The trainer's loss scaler: only amp on CUDA scales the loss (fp16 gradients underflow)."""
    from services.trainer.engine.precision import grad_scaler

    return grad_scaler(precision, device)
