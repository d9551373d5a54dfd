"""Contrastive loss over the global batch of all ranks.

Features of every rank are gathered with ``torch.distributed.nn.functional.all_gather``, whose
backward sends each rank's share of the gradient back to the rank that produced the features.
So every rank computes the same loss over the whole global batch; the local features keep
their gradient, and DDP's gradient averaging then yields exactly the gradient a single process
would get for the whole batch.

Two kinds of loss over the logits ``L = s * I @ T.T`` (``I``, ``T`` L2-normalised, ``s`` the
logit scale multiplier ``exp(model.logit_scale)``, row ``i`` of ``I`` paired with row ``i`` of ``T``):

``clip``
    ``(CE(L, arange) + CE(L.T, arange)) / 2`` -- Chinese-CLIP's symmetric loss.
``dsl``
    Dual softmax: each direction's logits are reweighted by a prior computed along the other
    axis before the cross-entropy,
    ``L_i2t = L * softmax(L / tau, dim=0) * N`` and ``L_t2i = L.T * softmax(L.T / tau, dim=0) * N``,
    loss ``CE(L_i2t, arange) + CE(L_t2i, arange)``, where ``N`` is the global batch size and
    ``tau`` the DSL temperature. The two directions are summed, not averaged, as the prototype
    does: its logged losses stay comparable and, with AdamW's epsilon, the optimisation is the
    same. The factor ``N`` makes a uniform prior the identity, so a large ``tau`` (the prototype
    used 1000) tends to twice the ``clip`` loss and a small one sharpens the prior. The prior is
    not detached (as in the prototype).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F

# The autograd-aware all_gather is the documented way to gather with gradients; its deprecation
# notice points to a private module, so the notice is silenced rather than the API changed.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                        category=FutureWarning)

LossKind = Literal["clip", "dsl"]
LOSS_KINDS: tuple[str, ...] = ("clip", "dsl")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``features`` of all ranks in rank order, differentiably.

    With a single process (or no process group) the tensor is returned unchanged."""
    if not _distributed():
        return features
    return torch.cat(dist_fn.all_gather(features), dim=0)


@dataclass
class LossOutput:
    loss: torch.Tensor
    logits_per_image: torch.Tensor  # global image x global text, before any DSL reweighting
    img2txt_acc: torch.Tensor  # fraction of images whose best text is their own (0-dim)
    txt2img_acc: torch.Tensor


def batch_accuracies(logits_per_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch top-1 accuracies image->text and text->image of a square logits matrix."""
    target = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    with torch.no_grad():
        img2txt = (logits_per_image.argmax(dim=1) == target).float().mean()
        txt2img = (logits_per_image.argmax(dim=0) == target).float().mean()
    return img2txt, txt2img


def dual_softmax_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits * softmax(logits / temperature, dim=0) * N``: reweight each row's logits by the
    prior of that column over all rows (see the module docstring)."""
    if temperature <= 0:
        raise ValueError(f"the DSL temperature must be > 0, got {temperature}")
    prior = torch.softmax(logits / temperature, dim=0)
    return logits * prior * logits.shape[0]


def gather_valid(valid: torch.Tensor) -> torch.Tensor:
    """The validity masks of all ranks in rank order (no gradient needed)."""
    if not _distributed():
        return valid
    parts = [torch.empty_like(valid) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, valid)
    return torch.cat(parts)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    kind: LossKind = "clip",
    dsl_temperature: float = 1000.0,
    gather: bool = True,
    valid: torch.Tensor | None = None,
) -> LossOutput:
    """Loss of paired local features (row i of each is one pair) over the global batch.

    ``logit_scale`` is the multiplier ``exp(model.logit_scale)`` (what ContrastiveModel and
    Chinese-CLIP's model return), not the log-parameter itself. Features are
    L2-normalised here, so the encoders' raw outputs can be passed. With ``gather`` the
    features of all ranks are gathered first (a no-op in a single process).

    ``valid`` (bool, one per local row) marks padding rows to leave out: ranks that hold fewer
    pairs than others pad to the same length, because the gather needs equal shapes; padding
    rows then take no part in the loss and get no gradient."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"{image_features.shape[0]} image features but {text_features.shape[0]} text features"
        )
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    if gather:
        image_features = gather_features(image_features)
        text_features = gather_features(text_features)
    if valid is not None:
        keep = (gather_valid(valid) if gather else valid).to(image_features.device)
        image_features, text_features = image_features[keep], text_features[keep]
    scale = torch.as_tensor(logit_scale, device=image_features.device).float()
    logits_per_image = scale * image_features @ text_features.t()
    logits_per_text = logits_per_image.t()
    target = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    if kind == "dsl":
        i2t = dual_softmax_logits(logits_per_image, dsl_temperature)
        t2i = dual_softmax_logits(logits_per_text, dsl_temperature)
        loss = F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target)  # the prototype's sum
    else:
        loss = (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_text, target)) / 2
    img2txt, txt2img = batch_accuracies(logits_per_image)
    return LossOutput(loss, logits_per_image, img2txt, txt2img)
