"""Precision and device: the one place that decides which device a run uses, which dtype its
weights have, what autocast does and whether gradients are scaled.

- ``fp32``: fp32 everywhere.
- ``amp``: fp32 weights; on CUDA fp16 autocast with a gradient scaler; on the CPU plain fp32
  (mixed precision there is slower than fp32 on most processors, and amp is the default).
- ``bf16``: fp32 weights, bf16 autocast (CUDA and CPU); no scaler (bf16 has fp32's range).
- ``fp16``: fp16 weights (as Chinese-CLIP trains); on CUDA fp16 autocast too, so inputs that
  arrive in fp32 meet fp16 weights without casts by hand.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, get_args

import torch

from shared.options import Precision

PRECISIONS: tuple[str, ...] = get_args(Precision)


class DeviceUnavailableError(RuntimeError):
    pass


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto``: the local rank's GPU when CUDA is available, else the CPU."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {choice!r}; choose auto, cpu or cuda")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda was requested but no CUDA device is available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceUnavailableError(f"local rank {local_rank} needs GPU {local_rank} but only {count} are visible")
    return torch.device("cuda", local_rank)


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``, or None for none."""
    _check(precision)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def autocast(precision: str, device: torch.device) -> ContextManager:
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def half_weights(precision: str) -> bool:
    """Whether the model's weights are fp16 (and its input images must be too)."""
    _check(precision)
    return precision == "fp16"


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 autocast over fp32 weights needs loss scaling; nothing else does."""
    _check(precision)
    if precision == "amp" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
