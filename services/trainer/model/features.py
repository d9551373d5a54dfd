"""Image and text features of a ChineseCLIPModel, computed the way Chinese-CLIP computes them.

The image feature is the projected, post-layer-normed class token; the text feature is the
projected [CLS] hidden state. Both are returned unnormalised. The text attention mask is always
passed: without it padding tokens would be attended to and the features would differ from the
original implementation.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import ChineseCLIPModel


def unwrap(model: nn.Module) -> ChineseCLIPModel:
    """The ChineseCLIPModel inside DDP / ContrastiveModel / torch.compile wrappers."""
    while not isinstance(model, ChineseCLIPModel):
        inner = getattr(model, "module", None) or getattr(model, "model", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a ChineseCLIPModel, got {type(model).__name__}")
        model = inner
    return model


def encode_image(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """[batch, 3, H, W] normalised pixels -> [batch, projection_dim] unnormalised features."""
    clip = unwrap(model)
    # Calling the towers directly (rather than get_image_features) keeps the result a tensor
    # whichever transformers version returns output objects from get_*_features.
    vision = clip.vision_model(pixel_values=pixel_values)
    return clip.visual_projection(vision.pooler_output)


def encode_text(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, length] token ids and mask (1 = token, 0 = padding) -> [batch, projection_dim]."""
    if attention_mask is None:
        raise ValueError("the text attention mask must be passed")
    clip = unwrap(model)
    text = clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
    return clip.text_projection(text.last_hidden_state[:, 0, :])


class ContrastiveModel(nn.Module):
    """A ChineseCLIPModel whose forward returns what the contrastive loss needs.

    Wrap this (not the bare model) in DistributedDataParallel: DDP only synchronises gradients
    for computation that goes through the wrapped module's forward. Either input may be None
    (then its features are None), so the same wrapper serves image-only and text-only passes.
    """

    def __init__(self, model: ChineseCLIPModel):
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(L2-normalised image features, L2-normalised text features, logit_scale.exp())."""
        image_features = text_features = None
        if pixel_values is not None:
            image_features = nn.functional.normalize(encode_image(self.model, pixel_values), dim=-1)
        if input_ids is not None:
            text_features = nn.functional.normalize(encode_text(self.model, input_ids, attention_mask), dim=-1)
        return image_features, text_features, self.model.logit_scale.exp()
