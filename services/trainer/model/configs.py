"""Model configurations: Chinese-CLIP's image and text towers expressed as transformers configs.

The numbers follow Chinese-CLIP's published model configs (embed dim, widths, depths, heads,
patch and image sizes), so released `.pt` checkpoints fit the models built here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import ChineseCLIPConfig

# Chinese-CLIP's BERT-Chinese vocabulary; every text tower shares it.
VOCAB_SIZE = 21128
# CLIP's initial temperature 0.07, stored as ln(1/T) like Chinese-CLIP does.
LOGIT_SCALE_INIT = math.log(1 / 0.07)


@dataclass(frozen=True)
class VisionTower:
    image_size: int
    patch_size: int
    width: int
    layers: int
    head_width: int
    embed_dim: int  # the shared image-text projection size (Chinese-CLIP keeps it with the image tower)

    @property
    def heads(self) -> int:
        return self.width // self.head_width


@dataclass(frozen=True)
class TextTower:
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int


_VISION: dict[str, VisionTower] = {
    "ViT-B-32": VisionTower(224, 32, 768, 12, 64, 512),
    "ViT-B-16": VisionTower(224, 16, 768, 12, 64, 512),
    "ViT-L-14": VisionTower(224, 14, 1024, 24, 64, 768),
    "ViT-L-14-336": VisionTower(336, 14, 1024, 24, 64, 768),
    "ViT-H-14": VisionTower(224, 14, 1280, 32, 80, 1024),
    # Small enough to train from scratch on a CPU within a test, large enough (8x8 patches on a
    # 64px image) to tell colours, shapes and patterns apart in the synthetic data.
    "tiny": VisionTower(64, 8, 64, 2, 16, 64),
}

_TEXT: dict[str, TextTower] = {
    "RoBERTa-wwm-ext-base-chinese": TextTower(768, 12, 12, 3072),
    "RoBERTa-wwm-ext-large-chinese": TextTower(1024, 24, 16, 4096),
    "RBT3-chinese": TextTower(768, 3, 12, 3072),
    "tiny": TextTower(64, 2, 4, 256),
}

from shared.options import (  # noqa: E402  (the names are torch-free, shared with the job API)
    TEXT_MODELS, VISION_MODELS, UnknownModelError, canonical_text_model, canonical_vision_model,
)

# One list of names: the API validates against shared/options.py, this file holds the sizes.
assert set(VISION_MODELS) == set(_VISION) and set(TEXT_MODELS) == set(_TEXT), "model names out of step"


def vision_tower(name: str) -> VisionTower:
    return _VISION[canonical_vision_model(name)]


def text_tower(name: str) -> TextTower:
    return _TEXT[canonical_text_model(name)]


def image_resolution(vision_model: str) -> int:
    """Input image side in pixels for a vision model (224, 336 or 64 for tiny)."""
    return vision_tower(vision_model).image_size


def build_config(vision_model: str, text_model: str) -> ChineseCLIPConfig:
    """A ChineseCLIPConfig for a pair of towers, e.g. ("ViT-B-16", "RoBERTa-wwm-ext-base-chinese").

    The tower names are kept in the config (`vision_model_name`, `text_model_name`) so a saved
    transformers directory says what it holds.
    """
    vision_model = canonical_vision_model(vision_model)
    text_model = canonical_text_model(text_model)
    return config_for_towers(_VISION[vision_model], _TEXT[text_model], vision_model, text_model)


def config_for_towers(
    v: VisionTower, t: TextTower, vision_model: str | None = None, text_model: str | None = None
) -> ChineseCLIPConfig:
    """A ChineseCLIPConfig for tower dimensions that need not have a name."""
    vision_config = dict(
        hidden_size=v.width,
        intermediate_size=4 * v.width,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        projection_dim=v.embed_dim,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )
    text_config = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=t.hidden_size,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        pad_token_id=0,
    )
    return ChineseCLIPConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=v.embed_dim,
        logit_scale_init_value=LOGIT_SCALE_INIT,
        vision_model_name=vision_model,
        text_model_name=text_model,
    )
