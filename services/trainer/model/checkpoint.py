"""Checkpoints: Chinese-CLIP `.pt` files and transformers directories.

A Chinese-CLIP `.pt` is `{"epoch", "step", "name", "state_dict", "optimizer"}` where the state
dict uses Chinese-CLIP's key names (see keymap.py), usually with DDP's `module.` prefix. Files
written here keep that layout (prefix included, as Chinese-CLIP's training writes it), so
Chinese-CLIP loads their weights for training and for evaluation. They add one key,
`optimizer_param_names`, which lets a resumed run check that the optimizer state belongs to
the same parameters in the same order. The optimizer state is in our parameter layout (q/k/v
apart), so Chinese-CLIP resumes from our files with its --reset-optimizer; the other way round,
optimizer state written by Chinese-CLIP's training is translated parameter by parameter.

Typical use::

    ckpt = load_weights(model, "epoch_latest.pt")          # .pt or transformers dir; returns read_checkpoint()
    if not reset_optimizer:
        load_optimizer_state(optimizer, model, ckpt)        # clear error if the state does not fit
    start_epoch, start_step = ckpt["epoch"], ckpt["step"]
    ...
    save_checkpoint(path, model, optimizer, epoch, step, name)   # atomic: temp file + rename
    save_transformers(model, out_dir)                            # save_pretrained + vocab
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from services.trainer.model.configs import TEXT_MODELS, VISION_MODELS, text_tower, vision_tower
from services.trainer.model.factory import create_model, model_from_config
from services.trainer.model.features import unwrap
from services.trainer.model.keymap import (
    cnclip_to_transformers,
    is_cnclip_state_dict,
    strip_ddp_prefix,
    transformers_to_cnclip,
)

POSITION_KEY = "vision_model.embeddings.position_embedding.weight"
TRAINING_STATE_FILE = "training_state.json"
_SHOWN_MISMATCHES = 5
# Config fields whose difference changes the computation without changing any weight shape.
_SHAPE_FREE_FIELDS = ("num_attention_heads", "hidden_act")


def _without_ignored(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop what ChineseCLIPModel does not hold: the text pooler (Chinese-CLIP does not use it)
    and position-id buffers that older transformers versions saved."""
    return {
        k: v for k, v in state_dict.items()
        if not k.startswith("text_model.pooler.") and not k.endswith((".position_ids", ".token_type_ids"))
    }


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose weights do not fit the chosen model."""


# ---------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Chinese-CLIP `.pt` (or a `.pt` holding a bare state dict) or a transformers directory.

    Returns a dict with
      path, format ("pt" | "transformers"),
      epoch, step, name (None when the file does not record them),
      state_dict (ChineseCLIPModel key names, tensors on the CPU),
      origin (our key -> key in the file, for error messages),
      optimizer, optimizer_param_names (None when absent),
      config (the directory's ChineseCLIPConfig, or None for a .pt).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        return _read_transformers_dir(path)
    return _read_pt(path)


def _read_pt(path: Path) -> dict[str, Any]:
    try:
        # weights_only: a checkpoint is data; refusing arbitrary pickled objects keeps loading safe.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file can fail anywhere in unpickling, with any error type
        raise CheckpointError(f"cannot read {path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict")
    if "state_dict" in payload:
        raw = payload["state_dict"]
        meta = payload
    elif payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raw, meta = payload, {}
    else:
        raise CheckpointError(
            f"{path} has no 'state_dict' (keys: {', '.join(map(str, list(payload)[:10]))})"
        )
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a non-empty mapping of tensors")
    if any(".attnpool." in key for key in raw):
        raise CheckpointError(f"{path} holds a ResNet image tower (RN50); only ViT image towers are supported")
    if is_cnclip_state_dict(raw):
        state_dict, origin = cnclip_to_transformers(raw)
    else:
        state_dict = _without_ignored(strip_ddp_prefix(raw))
        origin = {k: k for k in state_dict}
    return {
        "path": str(path),
        "format": "pt",
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
        "name": meta.get("name"),
        "state_dict": state_dict,
        "origin": origin,
        "optimizer": meta.get("optimizer"),
        "optimizer_param_names": meta.get("optimizer_param_names"),
        "file_keys": list(strip_ddp_prefix(dict.fromkeys(raw))),
        "config": None,
        "online_steps": meta.get("online_steps"),  # this project's count; absent in Chinese-CLIP's files
    }


def _read_transformers_dir(path: Path) -> dict[str, Any]:
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is a directory without config.json, not a transformers model directory")
    try:
        config = ChineseCLIPConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises several types for a bad config
        raise CheckpointError(f"{path}/config.json is not a ChineseCLIP config ({exc})") from exc
    state_dict = _without_ignored(_read_weight_files(path))
    meta: dict[str, Any] = {}
    state_file = path / TRAINING_STATE_FILE
    if state_file.is_file():
        meta = json.loads(state_file.read_text(encoding="utf-8"))
    return {
        "path": str(path),
        "format": "transformers",
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
        "name": meta.get("name"),
        "state_dict": state_dict,
        "origin": {k: k for k in state_dict},
        "optimizer": None,
        "optimizer_param_names": None,
        "file_keys": list(state_dict),
        "config": config,
    }


def _read_weight_files(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if (path / "model.safetensors").is_file():
            return load_file(str(path / "model.safetensors"))
        index = path / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(str(path / shard)))
            return state
        if (path / "pytorch_model.bin").is_file():
            return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read the weights in {path} ({exc})") from exc
    raise CheckpointError(f"{path} has no model.safetensors, sharded safetensors index or pytorch_model.bin")


# ---------------------------------------------------------------------------------------- loading
def describe_model(model: nn.Module) -> str:
    """`ViT-B-16@RoBERTa-wwm-ext-base-chinese`, or the dimensions when the names are unknown."""
    config = unwrap(model).config
    vision, text = getattr(config, "vision_model_name", None), getattr(config, "text_model_name", None)
    if vision and text:
        return f"{vision}@{text}"
    v, t = config.vision_config, config.text_config
    return (
        f"ChineseCLIPModel(vision width {v.hidden_size} x {v.num_hidden_layers} layers, patch {v.patch_size}, "
        f"image {v.image_size}; text hidden {t.hidden_size} x {t.num_hidden_layers} layers)"
    )


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load a checkpoint's weights into `model` (a ChineseCLIPModel, possibly wrapped).

    `source` is a path (Chinese-CLIP .pt or transformers directory) or what read_checkpoint
    returned. Position embeddings are interpolated when the checkpoint was trained at another
    image size. Raises CheckpointMismatchError naming the model, the checkpoint and the first
    mismatching keys and shapes when the weights do not fit; the model is left untouched then.
    Returns the checkpoint (read_checkpoint's dict) for epoch, step and optimizer state.
    """
    checkpoint = read_checkpoint(source) if not isinstance(source, Mapping) else source
    clip = unwrap(model)
    if checkpoint.get("config") is not None:
        _check_config_fits(clip, checkpoint["config"], checkpoint["path"])
    state = dict(checkpoint["state_dict"])
    expected = clip.state_dict()
    if POSITION_KEY in state and POSITION_KEY in expected:
        state[POSITION_KEY] = resize_position_embedding(state[POSITION_KEY], expected[POSITION_KEY].shape[0])
    _check_state_fits(clip, state, expected, checkpoint)
    clip.load_state_dict(state, strict=True)
    return checkpoint


def _check_config_fits(model: ChineseCLIPModel, config: ChineseCLIPConfig, path: str) -> None:
    problems = []
    for tower in ("vision_config", "text_config"):
        ours, theirs = getattr(model.config, tower), getattr(config, tower)
        for field in _SHAPE_FREE_FIELDS:
            if getattr(ours, field) != getattr(theirs, field):
                problems.append(f"{tower}.{field}: checkpoint {getattr(theirs, field)!r} vs model {getattr(ours, field)!r}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit model {describe_model(model)}: " + "; ".join(problems)
        )


def _check_state_fits(
    model: ChineseCLIPModel,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    checkpoint: Mapping[str, Any],
) -> None:
    origin = checkpoint.get("origin") or {}
    shown = lambda key: origin.get(key, key).removeprefix("unmapped:")  # noqa: E731
    problems: list[str] = []
    wrong_shape = [
        f"{shown(k)}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)} ({k})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    missing = [f"{k} missing from the checkpoint" for k in expected if k not in state]
    unexpected = [f"{shown(k)} not in the model" for k in state if k not in expected]
    problems = wrong_shape + missing + unexpected
    if not problems:
        return
    counts = f"{len(wrong_shape)} shape mismatches, {len(missing)} missing, {len(unexpected)} unexpected keys"
    raise CheckpointMismatchError(
        f"checkpoint {checkpoint.get('path')} does not fit model {describe_model(model)} ({counts}); first: "
        + "; ".join(problems[:_SHOWN_MISMATCHES])
    )


def resize_position_embedding(position_embedding: torch.Tensor, positions: int) -> torch.Tensor:
    """Resample a ViT's [1 + grid*grid, width] position embedding to `positions` rows.

    The class position is kept; the grid is resized bicubically with aligned corners, the way
    Chinese-CLIP adapts its checkpoints to another image size. Non-square grids are returned
    unchanged, to be reported as a mismatch.
    """
    current = position_embedding.shape[0]
    if current == positions:
        return position_embedding
    old_grid, new_grid = math.isqrt(current - 1), math.isqrt(positions - 1)
    if old_grid * old_grid != current - 1 or new_grid * new_grid != positions - 1:
        return position_embedding
    cls_position, grid = position_embedding[:1], position_embedding[1:]
    width = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=True)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, width).to(position_embedding.dtype)
    return torch.cat([cls_position, grid], dim=0)


# -------------------------------------------------------------------------------- optimizer state
def optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its state-dict order (group by group)."""
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    return [names.get(id(p), "<not in model>") for group in optimizer.param_groups for p in group["params"]]


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Restore the optimizer state of a checkpoint into `optimizer` (built over `model`'s parameters).

    State saved by save_checkpoint must be for the same parameters in the same order. State
    saved by Chinese-CLIP's training (its two AdamW groups over its own parameters) is carried
    over parameter by parameter: split for q/k/v, transposed for the projections; our current
    group settings (lr, weight decay, betas) are kept. Raises CheckpointMismatchError when the
    checkpoint has no optimizer state or one that fits neither way; resume with
    --reset-optimizer then.
    """
    where = checkpoint.get("path")
    state = checkpoint.get("optimizer")
    if not state:
        raise CheckpointMismatchError(f"checkpoint {where} has no optimizer state; resume with --reset-optimizer")
    saved_names = checkpoint.get("optimizer_param_names")
    if saved_names is None:
        translated = _from_cnclip_optimizer_state(optimizer, model, checkpoint)
        if translated is None:
            raise CheckpointMismatchError(
                f"the optimizer state in {where} fits neither this trainer's layout nor Chinese-CLIP's for "
                f"{describe_model(model)}; resume with --reset-optimizer"
            )
        state = translated
    else:
        current = optimizer_param_names(model, optimizer)
        if list(saved_names) != current:
            diff = next(
                (f"position {i}: checkpoint {a} vs optimizer {b}"
                 for i, (a, b) in enumerate(zip(saved_names, current)) if a != b),
                f"checkpoint has {len(saved_names)} parameters, optimizer {len(current)}",
            )
            raise CheckpointMismatchError(
                f"the optimizer state in {where} is for other parameters than the optimizer of "
                f"{describe_model(model)} ({diff}); resume with --reset-optimizer"
            )
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointMismatchError(f"the optimizer state in {where} does not fit ({exc}); resume with --reset-optimizer") from exc


def _cnclip_no_decay(name: str) -> bool:
    # Chinese-CLIP's training puts these parameters in its first group (no weight decay).
    return "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def _from_cnclip_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, checkpoint: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Our optimizer's state dict built from one Chinese-CLIP saved, or None when it does not fit.

    Chinese-CLIP builds its optimizer from its model's parameters in definition order (the
    order of the checkpoint's state dict), split into a no-decay group and the rest, and
    skips frozen parameters (only the image tower can be frozen there).
    """
    saved, file_keys = checkpoint["optimizer"], checkpoint.get("file_keys") or []
    groups, saved_states = saved.get("param_groups"), saved.get("state", {})
    if not groups or not file_keys:
        return None
    index_of: dict[str, int] | None = None
    for vision_frozen in (False, True):
        names = [k for k in file_keys if not (vision_frozen and k.startswith("visual."))]
        no_decay = [n for n in names if _cnclip_no_decay(n)]
        rest = [n for n in names if not _cnclip_no_decay(n)]
        if [len(g["params"]) for g in groups] == [len(no_decay), len(rest)]:
            index_of = dict(zip(no_decay + rest, (i for g in groups for i in g["params"])))
            break
    if index_of is None:
        return None
    per_name = {name: saved_states[i] for name, i in index_of.items() if i in saved_states}
    params = dict(unwrap(model).named_parameters())
    # Where each of our parameters comes from (the tensors here only carry the key mapping).
    _, source_of = cnclip_to_transformers(dict.fromkeys(per_name, torch.zeros(3)))
    translated: dict[str, dict[str, Any]] = {}
    for field in {field for entry in per_name.values() for field in entry}:
        # Per-element state (exp_avg, exp_avg_sq, ...) is reshaped like its parameter;
        # scalars (step) are copied.
        tensors = {n: e[field] for n, e in per_name.items() if isinstance(e.get(field), torch.Tensor) and e[field].dim() > 0}
        mapped, _ = cnclip_to_transformers(tensors)
        for name, value in mapped.items():
            if name.startswith("unmapped:"):
                continue
            if name not in params or tuple(value.shape) != tuple(params[name].shape):
                return None
            translated.setdefault(name, {})[field] = value.clone()
        for name, source in source_of.items():
            value = per_name[source].get(field)
            if name in params and value is not None and not (isinstance(value, torch.Tensor) and value.dim() > 0):
                translated.setdefault(name, {})[field] = value.clone() if isinstance(value, torch.Tensor) else value
    current = optimizer.state_dict()
    names = optimizer_param_names(model, optimizer)
    indices = [i for g in current["param_groups"] for i in g["params"]]
    state = {index: translated[name] for name, index in zip(names, indices) if name in translated}
    return {"state": state, "param_groups": current["param_groups"]}


# ---------------------------------------------------------------------------------------- writing
def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    step: int,
    name: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a Chinese-CLIP compatible `.pt` atomically (temporary file, fsync, rename).
    ``extra`` adds keys of this project (such as ``online_steps``) that Chinese-CLIP ignores.

    A reader never sees a half-written file, and a crash keeps the previous checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clip = unwrap(model)
    payload: dict[str, Any] = {
        "epoch": int(epoch),
        "step": int(step),
        "name": str(name),
        "state_dict": {k: v.cpu() for k, v in transformers_to_cnclip(clip.state_dict()).items()},
        "optimizer": _cpu(optimizer.state_dict()) if optimizer is not None else None,
        "optimizer_param_names": optimizer_param_names(clip, optimizer) if optimizer is not None else None,
        **(extra or {}),
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def save_transformers(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    epoch: int | None = None,
    step: int | None = None,
    name: str | None = None,
) -> Path:
    """save_pretrained into `directory` with the tokenizer vocabulary, replacing it atomically.

    The directory then loads with ChineseCLIPModel.from_pretrained / AutoTokenizer.from_pretrained
    as well as with load_weights.
    """
    from services.trainer.tokenizer import get_tokenizer

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        unwrap(model).save_pretrained(str(staging))
        get_tokenizer().save_pretrained(str(staging))
        state = {"epoch": epoch, "step": step, "name": name}
        (staging / TRAINING_STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


# -------------------------------------------------------------------------- models from checkpoints
def infer_model_names(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """The (vision, text) tower names whose shapes fit a ChineseCLIPModel-keyed state dict."""
    try:
        patch = state_dict["vision_model.embeddings.patch_embedding.weight"]
        positions = state_dict[POSITION_KEY].shape[0]
        embed = state_dict["visual_projection.weight"].shape[0]
        words = state_dict["text_model.embeddings.word_embeddings.weight"]
        intermediate = state_dict["text_model.encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not a Chinese-CLIP ViT checkpoint: {exc.args[0]} is missing") from exc
    width, patch_size = patch.shape[0], patch.shape[-1]
    vision_layers = _count_layers(state_dict, "vision_model.encoder.layers.")
    text_layers = _count_layers(state_dict, "text_model.encoder.layer.")
    vision = [
        name for name in VISION_MODELS
        if (t := vision_tower(name)) and (t.width, t.patch_size, t.layers, t.embed_dim) == (width, patch_size, vision_layers, embed)
    ]
    # Prefer the tower trained at this resolution; another one works through interpolation.
    vision.sort(key=lambda name: (vision_tower(name).image_size // patch_size) ** 2 + 1 != positions)
    text = [
        name for name in TEXT_MODELS
        if (t := text_tower(name)) and (t.hidden_size, t.layers, t.intermediate_size) == (words.shape[1], text_layers, intermediate)
    ]
    if not vision or not text:
        raise CheckpointError(
            f"no known model has these towers: vision width {width}, patch {patch_size}, {vision_layers} layers, "
            f"embed {embed}; text hidden {words.shape[1]}, {text_layers} layers, intermediate {intermediate}"
        )
    return vision[0], text[0]


def _count_layers(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)})


def load_model(
    path: str | os.PathLike,
    *,
    vision_model: str | None = None,
    text_model: str | None = None,
    attn_implementation: str | None = None,
    grad_checkpointing: bool = False,
    precision: str | None = None,
) -> tuple[ChineseCLIPModel, dict[str, Any]]:
    """A model built for a checkpoint and loaded from it: (model, read_checkpoint's dict).

    Tower names default to those recorded in a transformers directory, else to the ones whose
    shapes fit the weights.
    """
    checkpoint = read_checkpoint(path)
    config = checkpoint["config"]
    if vision_model is None or text_model is None:
        recorded = (getattr(config, "vision_model_name", None), getattr(config, "text_model_name", None)) if config else (None, None)
        inferred = recorded if all(recorded) else infer_model_names(checkpoint["state_dict"])
        vision_model = vision_model or inferred[0]
        text_model = text_model or inferred[1]
    if config is not None and not getattr(config, "vision_model_name", None):
        # A directory saved elsewhere: its own config is the truth.
        model = model_from_config(
            config, attn_implementation=attn_implementation, grad_checkpointing=grad_checkpointing, precision=precision
        )
    else:
        model = create_model(
            vision_model, text_model,
            attn_implementation=attn_implementation, grad_checkpointing=grad_checkpointing, precision=precision,
        )
    load_weights(model, checkpoint)
    return model, checkpoint
