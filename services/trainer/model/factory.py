"""Build a randomly initialised ChineseCLIPModel for a pair of towers."""
from __future__ import annotations

import torch
from transformers import AutoModel, ChineseCLIPConfig, ChineseCLIPModel
from transformers.utils import is_flash_attn_2_available

from services.trainer.model.configs import build_config

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


class AttentionUnavailableError(RuntimeError):
    """The requested attention implementation cannot run here."""


def resolve_attn_implementation(requested: str | None, precision: str | None = None) -> str:
    """The attention kernel to use.

    None or "auto": FlashAttention-2 when the flash_attn package is installed and CUDA is present
    (and the model does not run in plain fp32, which FlashAttention cannot compute), else PyTorch
    SDPA. An explicit choice is honoured or refused with a clear reason.
    """
    if requested in (None, "auto"):
        if precision != "fp32" and is_flash_attn_2_available():
            return "flash_attention_2"
        return "sdpa"
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {requested!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if requested == "flash_attention_2" and not is_flash_attn_2_available():
        raise AttentionUnavailableError(
            "flash_attention_2 needs the flash-attn package (>= 2.3.3) and a CUDA device; "
            "use --attn-implementation sdpa here"
        )
    return requested


def create_model(
    vision_model: str,
    text_model: str,
    *,
    attn_implementation: str | None = None,
    grad_checkpointing: bool = False,
    precision: str | None = None,
) -> ChineseCLIPModel:
    """A new ChineseCLIPModel (fp32 weights, on the CPU, in train mode) for two named towers.

    `precision` ("amp", "bf16", "fp16", "fp32") only steers the automatic attention choice.
    Gradient checkpointing recomputes each transformer layer in the backward pass (non-reentrant,
    so it works with DDP and frozen towers).
    """
    return model_from_config(
        build_config(vision_model, text_model),
        attn_implementation=attn_implementation,
        grad_checkpointing=grad_checkpointing,
        precision=precision,
    )


def model_from_config(
    config: ChineseCLIPConfig,
    *,
    attn_implementation: str | None = None,
    grad_checkpointing: bool = False,
    precision: str | None = None,
) -> ChineseCLIPModel:
    """create_model for any ChineseCLIPConfig."""
    implementation = resolve_attn_implementation(attn_implementation, precision)
    # AutoModel.from_config is the public way to pick the attention kernel at construction.
    model = AutoModel.from_config(config, attn_implementation=implementation, dtype=torch.float32)
    if grad_checkpointing:
        enable_grad_checkpointing(model)
    model.train()
    return model


def enable_grad_checkpointing(model: ChineseCLIPModel) -> None:
    """Recompute every transformer layer in the backward pass (non-reentrant: DDP- and freeze-safe)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def grad_checkpointing_enabled(model: ChineseCLIPModel) -> bool:
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
