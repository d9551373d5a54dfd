"""Chinese-CLIP as transformers' ChineseCLIPModel: configs, construction, features, checkpoints."""
from __future__ import annotations

from services.trainer.model.configs import TEXT_MODELS, VISION_MODELS, build_config, image_resolution
from services.trainer.model.factory import create_model
from services.trainer.model.features import ContrastiveModel, encode_image, encode_text

__all__ = [
    "TEXT_MODELS",
    "VISION_MODELS",
    "ContrastiveModel",
    "build_config",
    "create_model",
    "encode_image",
    "encode_text",
    "image_resolution",
]
