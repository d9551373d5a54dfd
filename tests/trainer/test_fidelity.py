"""Our ChineseCLIPModel computes what Chinese-CLIP (cn_clip 1.6.0) computes, and their checkpoints
and ours load on both sides.

For random tiny configurations: weights of one side are carried to the other through a `.pt`
file, then image features, text features, the contrastive loss and its gradients are compared
in fp32 with dropout off.
"""
from __future__ import annotations

import importlib
import random

import pytest
import torch
import torch.nn.functional as F

from services.trainer.model.checkpoint import (
    load_optimizer_state,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from services.trainer.model.configs import (
    TextTower,
    VisionTower,
    config_for_towers,
    text_tower,
    vision_tower,
)
from services.trainer.model.factory import model_from_config
from services.trainer.model.features import ContrastiveModel, encode_image, encode_text
from services.trainer.model.keymap import transformers_to_cnclip
from services.trainer.tokenizer import tokenize
from services.trainer.engine.loss import contrastive_loss

cn_clip_model = importlib.import_module("cn_clip.clip.model")

TOLERANCE = 1e-5
TEXTS = [
    "红色圆形的杯子",
    "一件蓝色的、带条纹的短袖T恤，适合夏天穿！" * 4,  # longer than the context: truncated
    "Apple iPhone 手机壳 “网红”同款",
    "绿",
    "格子图案的黄色方形抱枕，柔软舒适",
]


def random_towers(seed: int) -> tuple[VisionTower, TextTower]:
    rng = random.Random(seed)
    patch = rng.choice([4, 8])
    head_width = rng.choice([8, 16])
    vision = VisionTower(
        image_size=patch * rng.choice([4, 6, 8]),
        patch_size=patch,
        width=head_width * rng.randint(1, 4),
        layers=rng.randint(1, 3),
        head_width=head_width,
        embed_dim=rng.choice([16, 32, 48]),
    )
    heads, head_dim = rng.randint(1, 4), rng.choice([8, 16])
    text = TextTower(hidden_size=heads * head_dim, layers=rng.randint(1, 3), heads=heads,
                     intermediate_size=heads * head_dim * rng.choice([2, 4]))
    return vision, text


CONFIGS = [pytest.param(vision_tower("tiny"), text_tower("tiny"), id="tiny")] + [
    pytest.param(*random_towers(seed), id=f"random{seed}") for seed in range(3)
]


class DataParallelLike(torch.nn.Module):
    """Holds the model under `.module`, so state-dict keys carry DDP's prefix as in Chinese-CLIP's training."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


def inputs(vision: VisionTower, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(TEXTS), 3, vision.image_size, vision.image_size, generator=generator)
    input_ids, attention_mask = tokenize(TEXTS)
    return pixels, input_ids, attention_mask


def reference_loss(model, pixels, input_ids) -> torch.Tensor:
    """Chinese-CLIP's training loss on one process (training/train.py, get_loss without aggregation)."""
    image_features, text_features, logit_scale = model(pixels, input_ids)
    logits_per_image = logit_scale * image_features @ text_features.t()
    logits_per_text = logit_scale * text_features @ image_features.t()
    target = torch.arange(len(logits_per_image))
    return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_text, target)) / 2


def our_loss(model, pixels, input_ids, attention_mask) -> torch.Tensor:
    image_features, text_features, logit_scale = ContrastiveModel(model)(pixels, input_ids, attention_mask)
    return contrastive_loss(image_features, text_features, logit_scale).loss


def assert_same_outputs(ours, theirs, vision: VisionTower) -> None:
    pixels, input_ids, attention_mask = inputs(vision)
    with torch.no_grad():
        torch.testing.assert_close(encode_image(ours, pixels), theirs.encode_image(pixels), atol=TOLERANCE, rtol=0)
        # Chinese-CLIP derives the mask from the padding id; we pass the tokenizer's mask.
        torch.testing.assert_close(
            encode_text(ours, input_ids, attention_mask), theirs.encode_text(input_ids), atol=TOLERANCE, rtol=0
        )
    ours_loss = our_loss(ours, pixels, input_ids, attention_mask)
    theirs_loss = reference_loss(theirs, pixels, input_ids)
    torch.testing.assert_close(ours_loss, theirs_loss, atol=TOLERANCE, rtol=0)
    # The gradients agree too, parameter by parameter (mapped to Chinese-CLIP's names).
    ours.zero_grad()
    theirs.zero_grad()
    ours_loss.backward()
    theirs_loss.backward()
    ours_grads = transformers_to_cnclip({n: p.grad for n, p in ours.named_parameters()}, ddp_prefix=False)
    theirs_grads = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    assert ours_grads.keys() == theirs_grads.keys()
    for name, grad in theirs_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("vision,text", CONFIGS)
def test_chinese_clip_checkpoint_gives_the_same_model(tmp_path, cnclip_model_factory, vision, text):
    torch.manual_seed(11)
    theirs = cnclip_model_factory(vision, text)
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    # Saved as Chinese-CLIP's training saves (training/main.py): DDP keys, optimizer state.
    torch.save(
        {"epoch": 2, "step": 40, "name": "theirs", "state_dict": DataParallelLike(theirs).state_dict(),
         "optimizer": optimizer.state_dict()},
        tmp_path / "epoch2.pt",
    )
    ours = model_from_config(config_for_towers(vision, text)).eval()
    checkpoint = load_weights(ours, tmp_path / "epoch2.pt")
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["name"]) == (2, 40, "theirs")
    assert_same_outputs(ours, theirs, vision)


@pytest.mark.parametrize("vision,text", CONFIGS)
def test_our_checkpoint_loads_in_chinese_clip(tmp_path, cnclip_model_factory, vision, text):
    torch.manual_seed(12)
    ours = model_from_config(config_for_towers(vision, text)).eval()
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    path = save_checkpoint(tmp_path / "epoch_latest.pt", ours, optimizer, epoch=1, step=7, name="ours")
    checkpoint = torch.load(path, map_location="cpu")

    # Chinese-CLIP's evaluation loading (eval/extract_features.py): strip `module.`, strict load.
    evaluated = cnclip_model_factory(vision, text)
    state = {k[len("module."):]: v for k, v in checkpoint["state_dict"].items() if "bert.pooler" not in k}
    evaluated.load_state_dict(state)
    assert_same_outputs(ours, evaluated, vision)

    # Chinese-CLIP's resume (training/main.py): DDP-wrapped model, resize_pos_embed, strict load.
    resumed = DataParallelLike(cnclip_model_factory(vision, text))
    state = {k: v for k, v in checkpoint["state_dict"].items() if "bert.pooler" not in k}
    cn_clip_model.resize_pos_embed(state, resumed, prefix="module.")
    resumed.load_state_dict(state)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["name"]) == (1, 7, "ours")
    assert_same_outputs(ours, resumed.module, vision)


def test_other_image_size_matches_chinese_clip_resize(tmp_path, cnclip_model_factory):
    """A checkpoint trained at 64px used at 96px: both sides interpolate positions the same way."""
    torch.manual_seed(13)
    small, text = vision_tower("tiny"), text_tower("tiny")
    large = VisionTower(96, small.patch_size, small.width, small.layers, small.head_width, small.embed_dim)
    source = cnclip_model_factory(small, text)
    torch.save({"epoch": 1, "step": 1, "name": "s", "state_dict": DataParallelLike(source).state_dict()}, tmp_path / "s.pt")

    theirs = DataParallelLike(cnclip_model_factory(large, text))
    state = dict(torch.load(tmp_path / "s.pt")["state_dict"])
    cn_clip_model.resize_pos_embed(state, theirs, prefix="module.")
    theirs.load_state_dict(state)
    ours = model_from_config(config_for_towers(large, text)).eval()
    load_weights(ours, tmp_path / "s.pt")
    assert_same_outputs(ours, theirs.module, large)


def test_reading_does_not_depend_on_the_writer(tmp_path, cnclip_model_factory):
    """The state dict we read from their file equals the one we map from a model holding the same weights."""
    torch.manual_seed(14)
    vision, text = vision_tower("tiny"), text_tower("tiny")
    theirs = cnclip_model_factory(vision, text)
    torch.save({"state_dict": theirs.state_dict()}, tmp_path / "plain.pt")
    ours = model_from_config(config_for_towers(vision, text))
    load_weights(ours, tmp_path / "plain.pt")
    round_trip = transformers_to_cnclip(read_checkpoint(tmp_path / "plain.pt")["state_dict"], ddp_prefix=False)
    assert round_trip.keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(round_trip[key], value), key


def cnclip_optimizer(model: torch.nn.Module, frozen_vision: bool = False) -> torch.optim.AdamW:
    """The optimizer Chinese-CLIP's training builds (training/main.py): no-decay group, then the rest."""
    if frozen_vision:
        for name, param in model.named_parameters():
            if "visual" in name:
                param.requires_grad = False
    no_decay = lambda n: "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [{"params": [p for n, p in named if no_decay(n) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in named if not no_decay(n) and p.requires_grad], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.98), eps=1e-6,
    )


def train_steps(step_fn, optimizer, vision: VisionTower, seeds) -> None:
    for seed in seeds:
        pixels, input_ids, attention_mask = inputs(vision, seed)
        optimizer.zero_grad()
        step_fn(pixels, input_ids, attention_mask).backward()
        optimizer.step()


@pytest.mark.parametrize("frozen_vision", [False, True], ids=["full", "frozen-vision"])
def test_resume_from_chinese_clip_optimizer_state(tmp_path, cnclip_model_factory, frozen_vision):
    """A run trained by Chinese-CLIP continues here with its AdamW moments: the next steps agree."""
    torch.manual_seed(15)
    vision, text = random_towers(5)
    theirs = cnclip_model_factory(vision, text)
    their_optimizer = cnclip_optimizer(DataParallelLike(theirs), frozen_vision)
    their_step = lambda pixels, ids, mask: reference_loss(theirs, pixels, ids)  # noqa: E731
    train_steps(their_step, their_optimizer, vision, seeds=[1, 2])
    torch.save({"epoch": 1, "step": 2, "name": "theirs", "state_dict": DataParallelLike(theirs).state_dict(),
                "optimizer": their_optimizer.state_dict()}, tmp_path / "epoch_latest.pt")

    ours = model_from_config(config_for_towers(vision, text)).eval()
    checkpoint = load_weights(ours, tmp_path / "epoch_latest.pt")
    trainable = [p for n, p in ours.named_parameters() if not (frozen_vision and n.startswith(("vision_model.", "visual_projection.")))]
    our_optimizer = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    load_optimizer_state(our_optimizer, ours, checkpoint)
    assert all(our_optimizer.state[p]["step"].item() == 2 for p in trainable)

    train_steps(their_step, their_optimizer, vision, seeds=[3, 4])
    train_steps(lambda *batch: our_loss(ours, *batch), our_optimizer, vision, seeds=[3, 4])
    mapped = transformers_to_cnclip(ours.state_dict(), ddp_prefix=False)
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(mapped[name], value, atol=1e-5, rtol=1e-4, msg=name)
