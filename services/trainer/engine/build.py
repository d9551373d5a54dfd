"""The one builder from a model to what trains it: its weights in the run's precision on the
run's device, the contrastive forward (DDP-wrapped across ranks), the optimizer and the step
runner. The training loop and test-time adaptation both build through here, so the two cannot
drift apart (a precision or optimizer rule changes in one place)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from services.trainer.engine.distributed import DistEnv
from services.trainer.engine.precision import half_weights
from services.trainer.engine.step import StepRunner, build_optimizer
from services.trainer.model.features import ContrastiveModel
from shared.options import PredictOptions, TrainOptions


@dataclass
class Engine:
    model: nn.Module  # the ChineseCLIPModel: what checkpoints hold, the logit scale
    contrastive: ContrastiveModel  # the plain forward (validation embeds through it)
    forward: nn.Module  # what a training forward calls: ``contrastive``, DDP-wrapped across ranks
    optimizer: torch.optim.AdamW
    runner: StepRunner

    def autocast(self) -> AbstractContextManager:
        return self.runner.autocast()


def build_engine(model: nn.Module, options: TrainOptions | PredictOptions, env: DistEnv) -> Engine:
    """Prepares ``model`` (weights loaded, frozen parts frozen) in place: fp16 weights when the
    precision asks for them, moved to ``env.device``; then builds optimizer and step runner."""
    if half_weights(options.precision):
        model.half()
    model.to(env.device)
    contrastive = ContrastiveModel(model)
    forward: nn.Module = contrastive
    if env.distributed:
        forward = nn.parallel.DistributedDataParallel(
            contrastive, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optimizer = build_optimizer(model, options)
    runner = StepRunner(forward=forward, model=model, optimizer=optimizer, env=env,
                        precision=options.precision, loss=options.loss,
                        dsl_temperature=options.dsl_temperature)
    return Engine(model, contrastive, forward, optimizer, runner)
