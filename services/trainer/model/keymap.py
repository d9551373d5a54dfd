"""State-dict translation between Chinese-CLIP's CLIP module and transformers' ChineseCLIPModel.

Chinese-CLIP names                                  ChineseCLIPModel names
logit_scale                                         logit_scale
text_projection            [text_width, embed]      text_projection.weight    [embed, text_width] (transposed)
visual.proj                [width, embed]           visual_projection.weight  [embed, width]      (transposed)
visual.class_embedding                              vision_model.embeddings.class_embedding
visual.positional_embedding                         vision_model.embeddings.position_embedding.weight
visual.conv1.weight                                 vision_model.embeddings.patch_embedding.weight
visual.ln_pre / ln_post                             vision_model.pre_layrnorm / post_layernorm
visual.transformer.resblocks.N.attn.in_proj_*       vision_model.encoder.layers.N.self_attn.{q,k,v}_proj.* (split in 3)
  (.attn.Wqkv.* when saved with FlashAttention)
visual.transformer.resblocks.N.attn.out_proj        ...self_attn.out_proj
visual.transformer.resblocks.N.ln_1 / ln_2          ...layer_norm1 / layer_norm2
visual.transformer.resblocks.N.mlp.c_fc / c_proj    ...mlp.fc1 / fc2
bert.*                                              text_model.*  (bert.pooler.* is not part of either model)
  (bert...attention.self.Wqkv / out_proj with FlashAttention: split into query/key/value, output.dense)
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

DDP_PREFIX = "module."

_VISION_BLOCK = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.(.+)$")
_BERT_FLASH = re.compile(r"^bert\.encoder\.layer\.(\d+)\.attention\.self\.(Wqkv|out_proj)\.(weight|bias)$")

# Renames inside one vision block (Chinese-CLIP -> transformers); q/k/v are handled apart.
_VISION_BLOCK_RENAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_VISION_TOP_RENAMES = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}

_VISION_TOP_BACK = {v: k for k, v in _VISION_TOP_RENAMES.items()}
_VISION_BLOCK_BACK = {v: k for k, v in _VISION_BLOCK_RENAMES.items()}
_TRANSPOSED_BACK = {v: k for k, v in _TRANSPOSED.items()}
_OURS_VISION_BLOCK = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DistributedDataParallel's `module.` prefix when every key carries it."""
    if state_dict and all(key.startswith(DDP_PREFIX) for key in state_dict):
        return {key[len(DDP_PREFIX):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def is_cnclip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    keys = strip_ddp_prefix(dict.fromkeys(state_dict)).keys()
    return any(key.startswith(("visual.", "bert.")) for key in keys)


def cnclip_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Chinese-CLIP state dict (with or without `module.`) -> (ChineseCLIPModel state dict, origin).

    `origin` maps each produced key to the checkpoint key it came from, so errors can name the
    key the user can find in their file. Keys with no counterpart are kept under their own name
    (prefixed `unmapped:`) so the caller reports them as unexpected rather than losing them.
    """
    source = strip_ddp_prefix(state_dict)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}

    def put(key: str, value: torch.Tensor, from_key: str) -> None:
        out[key] = value
        origin[key] = from_key

    for key, value in source.items():
        if key.startswith("bert.pooler."):
            continue  # Chinese-CLIP's text tower has no pooler; released files still carry one
        if key == "logit_scale":
            put(key, value, key)
        elif key in _TRANSPOSED:
            put(_TRANSPOSED[key], value.t(), key)
        elif key in _VISION_TOP_RENAMES:
            put(_VISION_TOP_RENAMES[key], value, key)
        elif match := _VISION_BLOCK.match(key):
            layer, rest = match.groups()
            prefix = f"vision_model.encoder.layers.{layer}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.Wqkv.weight", "attn.Wqkv.bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    put(f"{prefix}self_attn.{name}.{kind}", part, key)
            elif rest in _VISION_BLOCK_RENAMES:
                put(prefix + _VISION_BLOCK_RENAMES[rest], value, key)
            else:
                put(f"unmapped:{key}", value, key)
        elif match := _BERT_FLASH.match(key):
            layer, module, kind = match.groups()
            prefix = f"text_model.encoder.layer.{layer}.attention."
            if module == "Wqkv":
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    put(f"{prefix}self.{name}.{kind}", part, key)
            else:
                put(f"{prefix}output.dense.{kind}", value, key)
        elif key.startswith("bert."):
            put("text_model." + key[len("bert."):], value, key)
        else:
            put(f"unmapped:{key}", value, key)
    return out, origin


def transformers_to_cnclip(state_dict: Mapping[str, torch.Tensor], *, ddp_prefix: bool = True) -> dict[str, torch.Tensor]:
    """ChineseCLIPModel state dict -> Chinese-CLIP's CLIP state dict (non-flash layout).

    With `ddp_prefix` the keys carry `module.`, as Chinese-CLIP's own training writes them; its
    loaders strip the prefix, so such a file loads for training and for evaluation alike.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        value = value.detach()
        if key == "logit_scale":
            out[key] = value
        elif key in _TRANSPOSED_BACK:
            out[_TRANSPOSED_BACK[key]] = value.t().contiguous()
        elif key in _VISION_TOP_BACK:
            out[_VISION_TOP_BACK[key]] = value
        elif match := _OURS_VISION_BLOCK.match(key):
            layer, rest = match.groups()
            prefix = f"visual.transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = rest.split(".")
                qkv.setdefault((layer, kind), {})[proj] = value
            elif rest in _VISION_BLOCK_BACK:
                out[prefix + _VISION_BLOCK_BACK[rest]] = value
            else:
                raise KeyError(f"no Chinese-CLIP counterpart for {key}")
        elif key.startswith("text_model."):
            if key.startswith("text_model.pooler."):
                continue
            out["bert." + key[len("text_model."):]] = value
        else:
            raise KeyError(f"no Chinese-CLIP counterpart for {key}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise KeyError(f"vision layer {layer} lacks some of q/k/v {kind}")
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"visual.transformer.resblocks.{layer}.attn.{name}"] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0
        )
    if ddp_prefix:
        out = {DDP_PREFIX + key: value for key, value in out.items()}
    return out
