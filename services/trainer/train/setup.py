"""Run set-up: what a training run holds before its first step. The model (resumed weights
loaded, the vision tower frozen when asked), its engine (precision, placement, DDP, optimizer,
step runner), the training and validation data, the run's length in steps, and where a resumed
run continues. Built once by ``prepare_run`` and handed to the ``Trainer`` and to the online
hook's factory, so neither builds the other's parts."""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.trainer.engine.build import Engine, build_engine
from services.trainer.engine.distributed import DistEnv
from services.trainer.model import create_model, image_resolution
from services.trainer.model.checkpoint import load_optimizer_state, load_weights
from services.trainer.model.features import unwrap
from services.trainer.train.config import ConfigError, TrainConfig
from services.trainer.train.data import SplitData, build_train_data, build_valid_data
from services.trainer.train.schedule import warmup_cosine_lr

log = logging.getLogger("cnclip.train")


@dataclass(frozen=True)
class RunLength:
    """How long a run is, in optimizer steps."""

    steps_per_epoch: int
    max_steps: int
    max_epochs: int

    @classmethod
    def of(cls, config: TrainConfig, batches_per_epoch: int) -> "RunLength":
        if batches_per_epoch < config.accum_freq:
            raise ConfigError(
                f"an epoch has {batches_per_epoch} batches per rank but --accum-freq is {config.accum_freq}; "
                "lower --accum-freq or --batch-size"
            )
        steps_per_epoch = batches_per_epoch // config.accum_freq
        if config.max_steps is not None:
            return cls(steps_per_epoch, config.max_steps, math.ceil(config.max_steps / steps_per_epoch))
        max_epochs = int(config.max_epochs)
        return cls(steps_per_epoch, steps_per_epoch * max_epochs, max_epochs)


@dataclass
class RunSetup:
    config: TrainConfig
    env: DistEnv
    engine: Engine
    train_data: SplitData
    valid_data: SplitData | None
    length: RunLength
    start_step: int  # where training continues (0 for a fresh run or --reset-data-offset)
    start_online_steps: int  # online steps the resumed checkpoint had counted

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    def lr_at(self, step: int) -> float:
        """The schedule's rate at ``step`` (what the online budget's steps were earned at)."""
        config = self.config
        return warmup_cosine_lr(step, config.lr, config.warmup, self.length.max_steps)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze_vision_tower(model: nn.Module) -> None:
    clip = unwrap(model)
    for module in (clip.vision_model, clip.visual_projection):
        for param in module.parameters():
            param.requires_grad_(False)


def resume_path(config: TrainConfig) -> Path | None:
    """``--resume``, else this run's own latest checkpoint (a restarted job continues)."""
    if config.resume is not None:
        return Path(config.resume)
    latest = config.checkpoint_dir / "epoch_latest.pt"
    if latest.is_file():
        log.info("continuing this run from %s", latest)
        return latest
    return None


def prepare_run(config: TrainConfig, env: DistEnv) -> RunSetup:
    seed_everything(config.seed)
    model = create_model(
        config.vision_model, config.text_model,
        attn_implementation=config.attn_implementation,
        grad_checkpointing=config.grad_checkpointing,
        precision=config.precision,
    )
    checkpoint = None
    path = resume_path(config)
    if path is not None:
        checkpoint = load_weights(model, path)
        log.info("loaded weights from %s (epoch %s, step %s)", path, checkpoint.get("epoch"), checkpoint.get("step"))
    if config.freeze_vision:
        freeze_vision_tower(model)
    engine = build_engine(model, config, env)
    resolution = image_resolution(config.vision_model)
    train_data = build_train_data(config, env, resolution)
    valid_data = build_valid_data(config, env, resolution) if config.val_data else None
    length = RunLength.of(config, train_data.num_batches)
    start_step = start_online_steps = 0
    if checkpoint is not None:
        start_step = _restore_training_state(config, engine, checkpoint, length, train_data.num_batches)
        if not config.reset_data_offset:
            start_online_steps = int(checkpoint.get("online_steps") or 0)
    return RunSetup(config, env, engine, train_data, valid_data, length, start_step, start_online_steps)


def _restore_training_state(config: TrainConfig, engine: Engine, checkpoint: dict[str, Any], length: RunLength,
                            batches_per_epoch: int) -> int:
    """Loads the optimizer state unless reset; returns the step to continue at."""
    if not config.reset_optimizer:
        if checkpoint.get("optimizer"):
            load_optimizer_state(engine.optimizer, engine.model, checkpoint)
            log.info("optimizer state restored from %s", checkpoint["path"])
        else:
            log.warning("%s holds no optimizer state; starting with a fresh optimizer", checkpoint["path"])
    if config.reset_data_offset:
        return 0
    step = int(checkpoint.get("step") or 0)
    epoch, batch = divmod(step, length.steps_per_epoch)
    recorded = checkpoint.get("epoch")
    log.info("continuing at step %d: epoch %d, batch %d of %d", step, epoch + 1,
             batch * config.accum_freq, batches_per_epoch)
    if recorded is not None and not (epoch <= int(recorded) <= epoch + 1):
        log.warning(
            "the checkpoint says epoch %s but step %d is in epoch %d with this data and batch size; "
            "pass --reset-data-offset if the data or the batch size changed", recorded, step, epoch + 1)
    return step
