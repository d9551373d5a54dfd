"""Checkpoints: .pt and transformers round trips, optimizer state, interpolation, bad input."""
from __future__ import annotations

import importlib
import os

import pytest
import torch
from transformers import AutoTokenizer, ChineseCLIPModel

from services.trainer.model import create_model, encode_image, encode_text
from services.trainer.model.checkpoint import (
    POSITION_KEY,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    infer_model_names,
    load_model,
    load_optimizer_state,
    load_weights,
    read_checkpoint,
    resize_position_embedding,
    save_checkpoint,
    save_transformers,
)
from services.trainer.model.configs import config_for_towers, text_tower, vision_tower
from services.trainer.model.factory import model_from_config
from services.trainer.model.keymap import transformers_to_cnclip
from services.trainer.tokenizer import tokenize


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def fresh(seed: int) -> ChineseCLIPModel:
    torch.manual_seed(seed)
    return create_model("tiny", "tiny")


def train_step(model, optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(4, 3, 64, 64, generator=generator)
    ids, mask = tokenize(["红色圆形", "蓝色方形", "绿色条纹", "黄色格子"])
    model.eval()  # no dropout: two runs of the same step must agree exactly
    image = torch.nn.functional.normalize(encode_image(model, pixels), dim=-1)
    text = torch.nn.functional.normalize(encode_text(model, ids, mask), dim=-1)
    logits = model.logit_scale.exp() * image @ text.t()
    target = torch.arange(4)
    loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.t(), target)) / 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# ------------------------------------------------------------------------------ .pt round trips
def test_pt_file_has_chinese_clip_layout(tmp_path):
    model = fresh(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_step(model, optimizer, 0)
    path = save_checkpoint(tmp_path / "epoch3.pt", model, optimizer, epoch=3, step=120, name="exp")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"epoch", "step", "name", "state_dict", "optimizer"} <= raw.keys()
    assert (raw["epoch"], raw["step"], raw["name"]) == (3, 120, "exp")
    keys = list(raw["state_dict"])
    assert all(k.startswith("module.") for k in keys)
    assert "module.visual.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "module.bert.encoder.layer.1.attention.self.query.weight" in keys
    # Projections are stored [width, embed] as Chinese-CLIP keeps them.
    assert torch.equal(raw["state_dict"]["module.text_projection"], model.text_projection.weight.t())
    assert torch.equal(raw["state_dict"]["module.visual.proj"], model.visual_projection.weight.t())
    assert [p.name for p in tmp_path.iterdir()] == ["epoch3.pt"]  # no temporary file left behind


def test_pt_round_trip_restores_weights_and_metadata(tmp_path):
    model = fresh(0)
    path = save_checkpoint(tmp_path / "a.pt", model, None, epoch=1, step=2, name="n")
    other = fresh(1)
    checkpoint = load_weights(other, path)
    assert_same_weights(model, other)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["name"]) == (1, 2, "n")
    assert checkpoint["format"] == "pt" and checkpoint["optimizer"] is None


def test_resume_continues_exactly(tmp_path):
    """Weights + optimizer state restored: the next step equals the uninterrupted run's."""
    model = fresh(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.001)
    train_step(model, optimizer, 0)
    path = save_checkpoint(tmp_path / "latest.pt", model, optimizer, epoch=1, step=1, name="r")
    train_step(model, optimizer, 1)

    resumed = fresh(5)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.001)
    checkpoint = load_weights(resumed, path)
    load_optimizer_state(resumed_optimizer, resumed, checkpoint)
    train_step(resumed, resumed_optimizer, 1)
    assert_same_weights(model, resumed)


def test_optimizer_state_for_other_parameters_is_refused(tmp_path, tiny_checkpoint):
    model = fresh(0)
    checkpoint = load_weights(model, tiny_checkpoint)
    # Frozen vision tower: the optimizer holds other parameters than the saved one.
    text_only = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("vision")], lr=1e-3)
    with pytest.raises(CheckpointMismatchError, match="reset-optimizer"):
        load_optimizer_state(text_only, model, checkpoint)
    no_state = load_weights(model, save_checkpoint(tmp_path / "x.pt", model, None, 0, 0, "x"))
    with pytest.raises(CheckpointMismatchError, match="no optimizer state"):
        load_optimizer_state(torch.optim.AdamW(model.parameters()), model, no_state)


def test_chinese_clip_optimizer_state_is_refused_with_advice(tmp_path, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    del raw["optimizer_param_names"]  # as Chinese-CLIP writes it
    torch.save(raw, tmp_path / "theirs.pt")
    model = fresh(0)
    checkpoint = load_weights(model, tmp_path / "theirs.pt")
    with pytest.raises(CheckpointMismatchError, match="fits neither this trainer's layout nor Chinese-CLIP's.*--reset-optimizer"):
        load_optimizer_state(torch.optim.AdamW(model.parameters()), model, checkpoint)


@pytest.mark.parametrize("variant", ["bare", "no_prefix", "pooler", "fp16", "flash"])
def test_pt_variants_load(tmp_path, variant):
    model = fresh(0)
    state = transformers_to_cnclip(model.state_dict(), ddp_prefix=variant not in ("bare", "no_prefix"))
    prefix = "module." if variant not in ("bare", "no_prefix") else ""
    if variant == "pooler":
        state[prefix + "bert.pooler.dense.weight"] = torch.zeros(64, 64)
        state[prefix + "bert.pooler.dense.bias"] = torch.zeros(64)
    if variant == "fp16":
        state = {k: v.half() for k, v in state.items()}
    if variant == "flash":  # the layout Chinese-CLIP saves when trained with FlashAttention
        for key in [k for k in state if "attn.in_proj" in k]:
            state[key.replace("attn.in_proj_weight", "attn.Wqkv.weight").replace("attn.in_proj_bias", "attn.Wqkv.bias")] = state.pop(key)
        for layer in range(2):
            base = f"{prefix}bert.encoder.layer.{layer}.attention."
            for kind in ("weight", "bias"):
                state[f"{base}self.Wqkv.{kind}"] = torch.cat([state.pop(f"{base}self.{n}.{kind}") for n in ("query", "key", "value")])
                state[f"{base}self.out_proj.{kind}"] = state.pop(f"{base}output.dense.{kind}")
    payload = state if variant == "bare" else {"epoch": 1, "step": 1, "name": "v", "state_dict": state}
    torch.save(payload, tmp_path / "v.pt")
    other = fresh(1)
    load_weights(other, tmp_path / "v.pt")
    if variant == "fp16":
        for key, value in model.state_dict().items():
            torch.testing.assert_close(other.state_dict()[key], value.half().float(), atol=0, rtol=0)
    else:
        assert_same_weights(model, other)


# -------------------------------------------------------------------------- transformers dirs
def test_transformers_dir_round_trip(tmp_path, tiny_checkpoint):
    model = fresh(0)
    load_weights(model, tiny_checkpoint)
    directory = save_transformers(model, tmp_path / "hf", epoch=1, step=1, name="tiny")
    # Plain transformers can use the directory: model and tokenizer.
    plain = ChineseCLIPModel.from_pretrained(directory, local_files_only=True)
    assert_same_weights(model, plain)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    assert tokenizer("红色连衣裙")["input_ids"] == tokenize("红色连衣裙")[0][0, :7].tolist()
    # And back to a .pt that loads into a fresh model.
    other = fresh(3)
    checkpoint = load_weights(other, directory)
    assert checkpoint["format"] == "transformers" and checkpoint["step"] == 1
    assert_same_weights(model, other)
    again = fresh(4)
    load_weights(again, save_checkpoint(tmp_path / "back.pt", other, None, 1, 1, "b"))
    assert_same_weights(model, again)
    # Saving over an existing directory replaces it.
    save_transformers(fresh(9), directory)
    assert not torch.equal(read_checkpoint(directory)["state_dict"][POSITION_KEY], model.state_dict()[POSITION_KEY])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pt", "hf"]


def test_load_model_infers_towers(tmp_path, tiny_checkpoint):
    model, checkpoint = load_model(tiny_checkpoint)
    assert (model.config.vision_model_name, model.config.text_model_name) == ("tiny", "tiny")
    assert infer_model_names(checkpoint["state_dict"]) == ("tiny", "tiny")
    hf_model, _ = load_model(save_transformers(model, tmp_path / "hf"))
    assert_same_weights(model, hf_model)


def test_infer_names_of_full_size_towers():
    with torch.device("meta"):
        for vision, text in [("ViT-L-14-336", "RBT3-chinese"), ("ViT-L-14", "RoBERTa-wwm-ext-large-chinese"),
                             ("ViT-B-32", "RoBERTa-wwm-ext-base-chinese")]:
            state = create_model(vision, text).state_dict()
            assert infer_model_names(state) == (vision, text)


# -------------------------------------------------------------------------------- interpolation
def test_position_embeddings_are_interpolated(tmp_path, tiny_checkpoint):
    bigger = model_from_config(config_for_towers(
        vision_tower("tiny").__class__(**{**vision_tower("tiny").__dict__, "image_size": 96}), text_tower("tiny")
    ))
    checkpoint = load_weights(bigger, tiny_checkpoint)
    loaded = bigger.state_dict()[POSITION_KEY]
    original = checkpoint["state_dict"][POSITION_KEY]
    assert loaded.shape == (1 + 12 * 12, 64) and original.shape == (1 + 8 * 8, 64)
    assert torch.equal(loaded[0], original[0])
    # Corners of an align_corners resize keep their values.
    grid_old, grid_new = original[1:].reshape(8, 8, 64), loaded[1:].reshape(12, 12, 64)
    torch.testing.assert_close(grid_new[0, 0], grid_old[0, 0])
    torch.testing.assert_close(grid_new[-1, -1], grid_old[-1, -1])
    with torch.no_grad():
        assert encode_image(bigger.eval(), torch.randn(1, 3, 96, 96)).shape == (1, 64)


def test_resize_matches_chinese_clip():
    cn_model = importlib.import_module("cn_clip.clip.model")

    class Target(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Module()
            self.visual.grid_size = (12, 12)

    old = torch.randn(1 + 7 * 7, 32)
    state = {"visual.positional_embedding": old.clone()}
    cn_model.resize_pos_embed(state, Target())
    torch.testing.assert_close(resize_position_embedding(old, 1 + 12 * 12), state["visual.positional_embedding"])


# ----------------------------------------------------------------------------- mismatches, bad input
def test_mismatch_names_model_checkpoint_keys_and_shapes(tiny_checkpoint):
    model = create_model("tiny", "RBT3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(model, tiny_checkpoint)
    message = str(info.value)
    assert "tiny@RBT3-chinese" in message and str(tiny_checkpoint) in message
    assert "bert.embeddings.word_embeddings.weight: checkpoint (21128, 64) vs model (21128, 768)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_unexpected_and_missing_keys_are_named(tmp_path):
    model = fresh(0)
    state = transformers_to_cnclip(model.state_dict())
    state["module.visual.extra_head.weight"] = torch.zeros(3)
    del state["module.bert.encoder.layer.1.output.dense.bias"]
    torch.save({"epoch": 0, "step": 0, "name": "x", "state_dict": state}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(fresh(1), tmp_path / "odd.pt")
    message = str(info.value)
    assert "1 missing, 1 unexpected" in message
    assert "text_model.encoder.layer.1.output.dense.bias missing" in message
    assert "visual.extra_head.weight not in the model" in message


def test_heads_mismatch_in_directory_is_reported(tmp_path):
    vision = vision_tower("tiny")
    other_heads = model_from_config(config_for_towers(vision.__class__(**{**vision.__dict__, "head_width": 32}), text_tower("tiny")))
    directory = save_transformers(other_heads, tmp_path / "hf")
    with pytest.raises(CheckpointMismatchError, match="num_attention_heads: checkpoint 2 vs model 4"):
        load_weights(fresh(0), directory)


def test_bad_inputs_fail_clearly(tmp_path):
    model = fresh(0)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        load_weights(model, tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "garbage.pt")
    good = save_checkpoint(tmp_path / "good.pt", model, None, 0, 0, "g")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(tmp_path / "truncated.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 1, "model": {}}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="has no 'state_dict'"):
        read_checkpoint(tmp_path / "nostate.pt")
    torch.save({"state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="non-empty mapping of tensors"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        read_checkpoint(tmp_path / "emptydir")
    directory = save_transformers(model, tmp_path / "hf")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        read_checkpoint(directory)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = fresh(0)
    path = save_checkpoint(tmp_path / "latest.pt", model, None, 1, 1, "keep")
    before = path.read_bytes()

    def disk_full(obj, handle, *args, **kwargs):  # the disk filling up half-way through a write
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, fresh(1), None, 2, 2, "lost")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["latest.pt"]
    assert read_checkpoint(path)["name"] == "keep"


def test_directory_with_pooler_and_position_ids_loads(tmp_path):
    """Directories written by other tools may carry the unused text pooler and old position-id buffers."""
    from safetensors.torch import load_file, save_file

    model = fresh(0)
    directory = save_transformers(model, tmp_path / "hf")
    state = load_file(directory / "model.safetensors")
    state["text_model.pooler.dense.weight"] = torch.zeros(64, 64)
    state["text_model.pooler.dense.bias"] = torch.zeros(64)
    state["text_model.embeddings.position_ids"] = torch.arange(512)[None]
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    other = fresh(1)
    load_weights(other, directory)
    assert_same_weights(model, other)


def test_resnet_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {"module.visual.attnpool.q_proj.weight": torch.zeros(2, 2),
                               "module.bert.embeddings.word_embeddings.weight": torch.zeros(2, 2)}}, tmp_path / "rn50.pt")
    with pytest.raises(CheckpointError, match="ResNet image tower"):
        load_weights(fresh(0), tmp_path / "rn50.pt")
