"""Model configurations against Chinese-CLIP's own, model construction and feature extraction."""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import ChineseCLIPModel
from transformers.utils import is_flash_attn_2_available

from services.trainer.model import (
    TEXT_MODELS,
    VISION_MODELS,
    ContrastiveModel,
    build_config,
    create_model,
    encode_image,
    encode_text,
    image_resolution,
)
from services.trainer.model.configs import UnknownModelError
from services.trainer.model.factory import (
    AttentionUnavailableError,
    grad_checkpointing_enabled,
    resolve_attn_implementation,
)
from services.trainer.model.keymap import transformers_to_cnclip
from services.trainer.tokenizer import tokenize

cn_clip_model = importlib.import_module("cn_clip.clip.model")
CNCLIP_CONFIGS = Path(cn_clip_model.__file__).parent / "model_configs"
RELEASED_VISION = [name for name in VISION_MODELS if name != "tiny"]
RELEASED_TEXT = [name for name in TEXT_MODELS if name != "tiny"]


def cnclip_info(vision: str, text: str) -> dict:
    info = json.loads((CNCLIP_CONFIGS / f"{vision}.json").read_text())
    info.update(json.loads((CNCLIP_CONFIGS / f"{text}.json").read_text()))
    return info


def test_every_released_tower_is_offered():
    assert set(RELEASED_VISION) == {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14"}
    assert set(RELEASED_TEXT) == {"RoBERTa-wwm-ext-base-chinese", "RoBERTa-wwm-ext-large-chinese", "RBT3-chinese"}
    assert "tiny" in VISION_MODELS and "tiny" in TEXT_MODELS


@pytest.mark.parametrize("vision", RELEASED_VISION)
def test_vision_config_matches_chinese_clip(vision):
    info = cnclip_info(vision, "RoBERTa-wwm-ext-base-chinese")
    config = build_config(vision, "RoBERTa-wwm-ext-base-chinese")
    v = config.vision_config
    assert config.projection_dim == info["embed_dim"]
    assert v.image_size == info["image_resolution"] == image_resolution(vision)
    assert v.num_hidden_layers == info["vision_layers"]
    assert v.hidden_size == info["vision_width"]
    assert v.patch_size == info["vision_patch_size"]
    assert v.num_attention_heads == info["vision_width"] // info.get("vision_head_width", 64)
    assert v.intermediate_size == 4 * info["vision_width"]
    assert v.hidden_act == "quick_gelu"


@pytest.mark.parametrize("text", RELEASED_TEXT)
def test_text_config_matches_chinese_clip(text):
    info = cnclip_info("ViT-B-16", text)
    t = build_config("ViT-B-16", text).text_config
    assert t.vocab_size == info["vocab_size"] == 21128
    assert t.hidden_size == info["text_hidden_size"]
    assert t.num_hidden_layers == info["text_num_hidden_layers"]
    assert t.num_attention_heads == info["text_num_attention_heads"]
    assert t.intermediate_size == info["text_intermediate_size"]
    assert t.max_position_embeddings == info["text_max_position_embeddings"] == 512
    assert t.type_vocab_size == info["text_type_vocab_size"] == 2
    assert t.hidden_act == info["text_hidden_act"]


@pytest.mark.parametrize(
    "vision,text",
    [("ViT-B-16", "RoBERTa-wwm-ext-base-chinese"), ("ViT-L-14-336", "RoBERTa-wwm-ext-base-chinese"),
     ("ViT-H-14", "RoBERTa-wwm-ext-large-chinese"), ("ViT-B-32", "RBT3-chinese")],
)
def test_weight_shapes_equal_chinese_clip(vision, text):
    """Every weight of the full-size models has the shape Chinese-CLIP gives it (built on the meta device)."""
    with torch.device("meta"):
        original = cn_clip_model.CLIP(**cnclip_info(vision, text))
        ours = ChineseCLIPModel(build_config(vision, text))
    ours_shapes = {k: tuple(v.shape) for k, v in transformers_to_cnclip(ours.state_dict(), ddp_prefix=False).items()}
    original_shapes = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    assert ours_shapes == original_shapes


def test_rbt3_alias_and_unknown_names():
    assert build_config("ViT-B-16", "RBT3").text_model_name == "RBT3-chinese"
    with pytest.raises(UnknownModelError, match="ViT-X"):
        build_config("ViT-X", "tiny")
    with pytest.raises(UnknownModelError, match="bert-base"):
        create_model("tiny", "bert-base")
    with pytest.raises(UnknownModelError):
        image_resolution("RN50")


def test_tiny_model_defaults():
    model = create_model("tiny", "tiny")
    assert isinstance(model, ChineseCLIPModel)
    assert model.training
    expected = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    assert model.config._attn_implementation == expected
    assert model.config.text_config._attn_implementation == expected
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    assert image_resolution("tiny") == model.config.vision_config.image_size == 64
    assert model.config.vision_model_name == "tiny" and model.config.text_model_name == "tiny"


def test_attention_choice():
    assert resolve_attn_implementation("eager") == "eager"
    assert resolve_attn_implementation(None, precision="fp32") == "sdpa"
    assert create_model("tiny", "tiny", attn_implementation="eager").config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="unknown attention"):
        resolve_attn_implementation("xformers")
    if is_flash_attn_2_available():
        assert resolve_attn_implementation("flash_attention_2") == "flash_attention_2"
    else:
        with pytest.raises(AttentionUnavailableError, match="flash-attn"):
            create_model("tiny", "tiny", attn_implementation="flash_attention_2")


def test_eager_and_sdpa_give_the_same_features():
    torch.manual_seed(1)
    sdpa = create_model("tiny", "tiny", attn_implementation="sdpa").eval()
    eager = create_model("tiny", "tiny", attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    ids, mask = tokenize(["红色圆形杯子", "blue"])
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encode_text(sdpa, ids, mask), encode_text(eager, ids, mask), atol=1e-5, rtol=0)
        torch.testing.assert_close(encode_image(sdpa, pixels), encode_image(eager, pixels), atol=1e-5, rtol=0)


def _gradients(model, seed):
    torch.manual_seed(seed)
    ids, mask = tokenize(["绿色三角形", "黄色格子圆形背包"])
    pixels = torch.randn(2, 3, 64, 64)
    loss = (encode_image(model, pixels) @ encode_text(model, ids, mask).t()).logsumexp(dim=1).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(2)
    plain = create_model("tiny", "tiny")
    checkpointed = create_model("tiny", "tiny", grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    assert grad_checkpointing_enabled(checkpointed) and not grad_checkpointing_enabled(plain)
    expected, got = _gradients(plain, 5), _gradients(checkpointed, 5)
    assert expected.keys() == got.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_text_features_ignore_padding(tiny_model):
    """The attention mask is passed: the same text padded to other lengths gives the same feature."""
    texts = ["一件红色的条纹连衣裙", "蓝色"]
    with torch.no_grad():
        short = encode_text(tiny_model, *tokenize(texts, context_length=16))
        long = encode_text(tiny_model, *tokenize(texts, context_length=52))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)
    ids, mask = tokenize(texts)
    with pytest.raises(ValueError, match="attention mask"):
        encode_text(tiny_model, ids, None)


def test_features_and_contrastive_wrapper(tiny_model):
    pixels = torch.randn(3, 3, 64, 64)
    ids, mask = tokenize(["a", "b", "c"])
    with torch.no_grad():
        image = encode_image(tiny_model, pixels)
        text = encode_text(tiny_model, ids, mask)
        wrapped = ContrastiveModel(tiny_model)
        image_n, text_n, scale = wrapped(pixels, ids, mask)
        only_text = wrapped(input_ids=ids, attention_mask=mask)
    assert image.shape == text.shape == (3, 64)
    assert not torch.allclose(image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(image_n, image / image.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(text_n, text / text.norm(dim=-1, keepdim=True))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert only_text[0] is None and torch.equal(only_text[1], text_n)
    # The wrapper unwraps too: features of the wrapper equal features of the model.
    with torch.no_grad():
        torch.testing.assert_close(encode_image(wrapped, pixels), image)
    with pytest.raises(TypeError, match="ChineseCLIPModel"):
        encode_image(torch.nn.Linear(2, 2), pixels)
