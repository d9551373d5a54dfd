"""Step 2: our model's features against Chinese-CLIP's own model (same weights) on this device.

fp32 with TF32 off must agree to rounding; under bf16 (and fp16) autocast each side is compared
with the other and with the fp32 reference. Also probes which of SDPA's kernels run our model
(forward and backward, bf16), and which attention implementation the trainer picks by default.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from tests.bench.gpu_check.common import (
    SIZES, Deadline, autocast_for, check_device, guarded, image_batch, paired_models, parse_args,
    text_batch, write_result,
)

FP32_MAX_RELATIVE_DIFF = 1e-4  # max |ours - theirs| / max |theirs|
LOW_PRECISION_MIN_COSINE = 0.99  # per-row cosine of a bf16/fp16 feature with another side's


@contextlib.contextmanager
def exact_fp32():
    """Plain fp32 matmuls and convolutions (cuDNN convolutions default to TF32 on Ampere and later)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compare(ours: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    ours, reference = ours.float(), reference.float()
    diff = (ours - reference).abs().max().item()
    return {
        "max_abs_diff": diff,
        "max_relative_diff": diff / max(reference.abs().max().item(), 1e-12),
        "min_cosine": torch.nn.functional.cosine_similarity(ours, reference, dim=-1).min().item(),
    }


def features(ours, theirs, pixels, input_ids, attention_mask, context) -> dict[str, torch.Tensor]:
    from services.trainer.model.features import encode_image, encode_text

    with torch.no_grad(), context:
        return {
            "ours_image": encode_image(ours, pixels), "ours_text": encode_text(ours, input_ids, attention_mask),
            # Chinese-CLIP derives the text mask from the padding id itself.
            "theirs_image": theirs.encode_image(pixels), "theirs_text": theirs.encode_text(input_ids),
        }


def sdpa_backends(model, pixels, input_ids, attention_mask, device) -> dict[str, str]:
    """Which SDPA kernels can run a bf16 training forward and backward of our model."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from services.trainer.model.features import ContrastiveModel

    contrastive = ContrastiveModel(model).train()
    # Each refused kernel also warns why; the reason is in the result already.
    warnings.filterwarnings("ignore", message=".*kernel", category=UserWarning)
    outcome = {}
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        def run(backend=backend):
            with sdpa_kernel([getattr(SDPBackend, backend)]), torch.autocast(device.type, dtype=torch.bfloat16):
                image, text, scale = contrastive(pixels, input_ids, attention_mask)
                (image @ text.t() * scale).logsumexp(dim=1).mean().backward()
            model.zero_grad(set_to_none=True)
            return "ok"
        result = guarded(run)
        outcome[backend.lower()] = result if isinstance(result, str) else result["error"].splitlines()[0][:300]
    return outcome


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes, device = SIZES[args.scale], check_device()
    deadline = Deadline(args.budget_s)
    ours, theirs = paired_models(sizes.vision_model, sizes.text_model, attn_implementation="sdpa")
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()
    pixels = image_batch(sizes.fidelity_batch, sizes.vision_model, device)
    input_ids, attention_mask = text_batch(sizes.fidelity_batch, device)
    result: dict = {"scale": args.scale, "device": str(device), "vision_model": sizes.vision_model,
                    "text_model": sizes.text_model, "batch": sizes.fidelity_batch,
                    "thresholds": {"fp32_max_relative_diff": FP32_MAX_RELATIVE_DIFF,
                                   "low_precision_min_cosine": LOW_PRECISION_MIN_COSINE}}

    with exact_fp32():
        reference = features(ours, theirs, pixels, input_ids, attention_mask, contextlib.nullcontext())
    fp32 = {tower: compare(reference[f"ours_{tower}"], reference[f"theirs_{tower}"]) for tower in ("image", "text")}
    fp32["pass"] = all(fp32[t]["max_relative_diff"] <= FP32_MAX_RELATIVE_DIFF for t in ("image", "text"))
    result["fp32"] = fp32

    # bf16: the precision training uses; amp's fp16 autocast exists on CUDA only.
    precisions = {"bf16": torch.bfloat16} | ({"fp16": torch.float16} if device.type == "cuda" else {})
    for name, dtype in precisions.items():
        def low_precision(dtype=dtype):
            low = features(ours, theirs, pixels, input_ids, attention_mask, torch.autocast(device.type, dtype=dtype))
            out = {}
            for tower in ("image", "text"):
                out[tower] = {
                    "ours_vs_theirs": compare(low[f"ours_{tower}"], low[f"theirs_{tower}"]),
                    "ours_vs_fp32": compare(low[f"ours_{tower}"], reference[f"theirs_{tower}"]),
                    "theirs_vs_fp32": compare(low[f"theirs_{tower}"], reference[f"theirs_{tower}"]),
                }
            out["pass"] = all(out[t][k]["min_cosine"] >= LOW_PRECISION_MIN_COSINE
                              for t in ("image", "text") for k in ("ours_vs_theirs", "ours_vs_fp32"))
            return out
        result[name] = guarded(low_precision)

    # The autocast the trainer would use for bf16 is the one measured above.
    result["trainer_bf16_autocast_dtype"] = guarded(lambda: str(autocast_for("bf16", device).fast_dtype))
    if not deadline.passed():
        result["sdpa_backends_bf16_train"] = guarded(
            lambda: sdpa_backends(ours, pixels, input_ids, attention_mask, device))

    def default_attention():
        from transformers.utils import is_flash_attn_2_available

        from services.trainer.model.factory import resolve_attn_implementation

        return {"flash_attn_installed": is_flash_attn_2_available(),
                "default_for_bf16": resolve_attn_implementation(None, "bf16"),
                "default_for_fp32": resolve_attn_implementation(None, "fp32")}
    result["attention_default"] = guarded(default_attention)
    result["ok"] = bool(fp32["pass"]) and all(
        isinstance(result[p], dict) and result[p].get("pass") for p in precisions)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
