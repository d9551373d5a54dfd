"""Learning rate: linear warmup, then cosine decay to zero (Chinese-CLIP's ``cosine_lr``).

During warmup the rate of step ``s`` (0-based) is ``base * (s + 1) / warmup``; afterwards
``0.5 * (1 + cos(pi * (s - warmup) / (total - warmup))) * base``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = total_steps - warmup
    if decay_steps <= 0:
        return base_lr
    progress = min(step - warmup, decay_steps) / decay_steps
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * base_lr


def warmup_cosine(
    optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total_steps: int
) -> Callable[[int], float]:
    """A function ``adjust(step) -> lr`` that sets the rate of every parameter group."""

    def adjust(step: int) -> float:
        lr = warmup_cosine_lr(step, base_lr, warmup, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    return adjust
