"""Image preprocessing, the same as Chinese-CLIP's: timm's AutoAugment pipeline for training
with augmentation, a plain bicubic resize otherwise; CLIP's mean and std in both."""
from __future__ import annotations

from typing import Callable

from PIL import Image
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def image_transform(resolution: int, train: bool = False, use_augment: bool = False,
                    random_erasing: float = 0.25) -> Callable:
    """PIL image -> normalised tensor [3, resolution, resolution].

    ``random_erasing`` is the probability of timm's random erasing in the augmented pipeline."""
    if train and use_augment:
        # timm builds the augmentation (random resized crop, flip, AutoAugment "original",
        # random erasing). RGB conversion comes first so that grey, palette or RGBA inputs go
        # through AutoAugment as RGB.
        from timm.data import create_transform

        augment = create_transform(
            input_size=resolution,
            scale=(0.9, 1.0),
            is_training=True,
            color_jitter=None,
            auto_augment="original",
            interpolation="bicubic",
            mean=CLIP_MEAN,
            std=CLIP_STD,
            re_prob=random_erasing,
        )
        return Compose([to_rgb, *augment.transforms])
    return Compose([
        Resize((resolution, resolution), interpolation=InterpolationMode.BICUBIC),
        to_rgb,
        ToTensor(),
        Normalize(CLIP_MEAN, CLIP_STD),
    ])
