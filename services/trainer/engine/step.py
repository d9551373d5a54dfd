"""One optimizer step on (image, text) pairs (``StepRunner``): the unit the main training loop,
the validation-time online learner and test-time adaptation all call.

A step takes ``accum_freq`` chunks of this rank's pairs. With one chunk it is a plain forward,
loss over the global batch, backward and update. With several, the features of all chunks are
first computed without gradients, then each chunk is recomputed with gradients against the
cached features of the others (Chinese-CLIP's accumulation), so the loss is always that of the
whole accumulated global batch; the logit scale takes its gradient from one pass only.

A chunk may carry a validity mask: online steps pad ranks with fewer pairs to the longest
rank's count so the feature gather has equal shapes; padding rows take no part in the loss.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from services.trainer.engine.distributed import DistEnv
from services.trainer.engine.loss import LossOutput, contrastive_loss
from services.trainer.engine.precision import autocast, grad_scaler, half_weights
from services.trainer.model.features import encode_image
from shared.options import OptimOptions

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 100


@dataclass
class Chunk:
    """Tensors of one forward pass: images, token ids, attention mask, optional validity."""

    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    valid: torch.Tensor | None = None


@dataclass
class StepResult:
    loss: float
    img2txt_acc: float
    txt2img_acc: float
    samples: int


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of parameters trained without weight decay: biases, normalisation layers and
    the logit scale (as Chinese-CLIP does). Normalisation layers are found by type, so the
    rule holds whatever the layers are called."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d))
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param_name == "bias" or param_name == "logit_scale":
                names.add(full)
    return names


def build_optimizer(model: nn.Module, options: OptimOptions) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (a TrainConfig or PredictConfig is an OptimOptions)."""
    exempt = no_weight_decay(model)
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if name in exempt else decay).append(param)
    return torch.optim.AdamW(
        [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": options.wd}],
        lr=options.lr, betas=(options.beta1, options.beta2), eps=options.eps,
    )


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


class StepRunner:
    """Runs training steps (not to be confused with ``shared.messages.TrainStep``, the event
    that reports them). Holds what a step needs: the model as trained (``forward`` = DDP-wrapped
    ContrastiveModel or the plain one), the ChineseCLIPModel for the logit-scale clamp, the
    optimizer, precision, loss and process group."""

    def __init__(self, *, forward: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                 env: DistEnv, precision: str, loss: str, dsl_temperature: float):
        self.forward = forward
        self.model = model
        self.optimizer = optimizer
        self.env = env
        self.device = env.device
        self.precision = precision
        self.loss_kind = loss
        self.dsl_temperature = dsl_temperature
        self.scaler = grad_scaler(precision, env.device)

    def autocast(self):
        return autocast(self.precision, self.device)

    def to_device(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  valid: torch.Tensor | None = None) -> Chunk:
        images = images.to(self.device, non_blocking=True)
        if half_weights(self.precision):
            images = images.half()
        return Chunk(images, input_ids.to(self.device, non_blocking=True),
                     attention_mask.to(self.device, non_blocking=True),
                     None if valid is None else valid.to(self.device))

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features (no gradient, eval mode, this step's precision): how the
        online learner compares crawled pictures with each other."""
        images = images.to(self.device)
        if half_weights(self.precision):
            images = images.half()
        training = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                features = encode_image(self.model, images)
        finally:
            self.model.train(training)
        return nn.functional.normalize(features.float(), dim=-1)

    def _loss(self, image_features, text_features, logit_scale, valid) -> LossOutput:
        return contrastive_loss(image_features, text_features, logit_scale, kind=self.loss_kind,
                                dsl_temperature=self.dsl_temperature, valid=valid)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def __call__(self, chunks: list[Chunk]) -> StepResult:
        self.forward.train()
        self.optimizer.zero_grad(set_to_none=True)
        valid = None
        if len(chunks) == 1:
            chunk = chunks[0]
            with self.autocast():
                image_features, text_features, logit_scale = self.forward(
                    chunk.images, chunk.input_ids, chunk.attention_mask)
            out = self._loss(image_features, text_features, logit_scale, chunk.valid)
            self._backward(out.loss)
        else:
            if any(c.valid is not None for c in chunks):
                valid = torch.cat([c.valid if c.valid is not None else
                                   torch.ones(c.images.shape[0], dtype=torch.bool, device=self.device)
                                   for c in chunks])
            with torch.no_grad(), self.autocast():
                cached = [self.forward(c.images, c.input_ids, c.attention_mask)[:2] for c in chunks]
            cached_images = [c[0] for c in cached]
            cached_texts = [c[1] for c in cached]
            for j, chunk in enumerate(chunks):
                last = j == len(chunks) - 1
                sync = contextlib.nullcontext() if last or not self.env.distributed else self.forward.no_sync()
                with sync:
                    with self.autocast():
                        image_j, text_j, logit_scale = self.forward(chunk.images, chunk.input_ids,
                                                                    chunk.attention_mask)
                    image_features = torch.cat(cached_images[:j] + [image_j] + cached_images[j + 1:])
                    text_features = torch.cat(cached_texts[:j] + [text_j] + cached_texts[j + 1:])
                    # Every pass computes the loss of the whole accumulated batch; its gradient
                    # reaches the logit scale in one pass only, or it would count accum_freq times.
                    out = self._loss(image_features, text_features,
                                     logit_scale if last else logit_scale.detach(), valid)
                    self._backward(out.loss)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if all(c.valid is None for c in chunks):  # every rank holds the same number of pairs
            samples = sum(c.images.shape[0] for c in chunks) * self.env.world_size
        else:
            local = torch.tensor([sum(int(c.valid.sum()) for c in chunks if c.valid is not None)], device=self.device)
            samples = int(self.env.all_reduce_sum(local).item())
        return StepResult(out.loss.item(), out.img2txt_acc.item(), out.txt2img_acc.item(), samples)
