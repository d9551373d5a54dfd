"""Step 3: training throughput of our model against Chinese-CLIP's own model, and MFU.

One step = forward of both towers under the trainer's autocast, the trainer's contrastive loss,
backward (with the trainer's loss scaler for amp on CUDA), AdamW step. Both models hold the same
weights and see the same batch in the same process; each side is measured on its own (warm-up,
then the median of timed steps), so its peak memory is its own.

Settings: precision amp|bf16 x attention sdpa|eager (ours; Chinese-CLIP's model has one attention
path, so its figure is shared by both) x gradient checkpointing off|on, most telling first, so a
short time budget still yields the headline (bf16, sdpa, no checkpointing). Then the largest
batch that fits (ours, bf16, sdpa, checkpointing on), doubling until out of memory or the cap.

MFU = model FLOPs per step / median step time / the GPU's peak dense bf16 FLOP/s. Model FLOPs
are counted by torch.utils.flop_counter.FlopCounterMode over one forward + loss + backward of our
model without checkpointing (matmuls, convolutions and attention; the recomputation that
checkpointing adds is not model FLOPs), per sample, times the batch.
"""
from __future__ import annotations

import statistics
import time

import torch

from tests.bench.gpu_check.common import (
    SIZES, Deadline, check_device, autocast_for, grad_scaler_for, guarded, failed, image_batch,
    paired_models, parse_args, peak_bf16_flops, peak_memory_bytes, reset_peak_memory, synchronize,
    text_batch, write_result,
)

SETTINGS = [  # (precision, attention, gradient checkpointing)
    ("bf16", "sdpa", False), ("amp", "sdpa", False), ("bf16", "eager", False), ("amp", "eager", False),
    ("bf16", "sdpa", True), ("amp", "sdpa", True), ("bf16", "eager", True), ("amp", "eager", True),
]
HEADLINE = ("bf16", "sdpa", False)
MFU_TARGET = 0.35
PUBLISHED = "Chinese-CLIP ViT-B-16 training: 271 samples/s per A100 in fp16, 417 with FlashAttention"


class Side:
    """One model under test: how to call it for the loss, and its own optimizer (the trainer's settings)."""

    def __init__(self, name: str, model: torch.nn.Module, forward):
        self.name, self.model, self.forward = name, model, forward
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.001)

    def step(self, inputs, precision: str, device: torch.device, scaler) -> None:
        from services.trainer.engine.loss import contrastive_loss

        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            image, text, scale = self.forward(*inputs)
        loss = contrastive_loss(image, text, scale, gather=False).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(self.optimizer)
            scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def set_grad_checkpointing(ours: torch.nn.Module, theirs: torch.nn.Module | None, enabled: bool) -> None:
    from services.trainer.model.factory import enable_grad_checkpointing, grad_checkpointing_enabled

    if enabled:
        enable_grad_checkpointing(ours)
    else:  # transformers >= 5 names it activation checkpointing; older releases gradient checkpointing
        (getattr(ours, "activation_checkpointing_disable", None) or ours.gradient_checkpointing_disable)()
    if grad_checkpointing_enabled(ours) != enabled:
        raise RuntimeError(f"could not turn gradient checkpointing {'on' if enabled else 'off'} in our model")
    if theirs is not None:
        theirs.set_grad_checkpointing(enabled)


def measure(side: Side, inputs, precision: str, device: torch.device, warmup: int, timed: int) -> dict:
    scaler = grad_scaler_for(precision, device)
    reset_peak_memory(device)
    for _ in range(warmup):
        side.step(inputs, precision, device, scaler)
    times = []
    for _ in range(timed):
        synchronize(device)
        start = time.perf_counter()
        side.step(inputs, precision, device, scaler)
        synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak = peak_memory_bytes(device)
    batch = inputs[0].shape[0]
    return {"median_step_s": round(median, 5), "samples_per_s": round(batch / median, 2),
            "steps_timed": timed, "peak_memory_gib": None if peak is None else round(peak / 2**30, 2)}


def count_flops_per_sample(side: Side, inputs, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from services.trainer.engine.loss import contrastive_loss

    side.optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        with autocast_for("bf16", device):
            image, text, scale = side.forward(*inputs)
        contrastive_loss(image, text, scale, gather=False).loss.backward()
    side.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / inputs[0].shape[0]


def brief(measured: dict) -> str:
    return measured["error"].splitlines()[0][:200] if failed(measured) else str(measured["samples_per_s"])


def mfu(flops_per_sample: float | None, peak: float | None, measured: dict) -> float | None:
    if not flops_per_sample or not peak or failed(measured):
        return None
    return round(flops_per_sample * measured["samples_per_s"] / peak, 4)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes, device = SIZES[args.scale], check_device()
    deadline = Deadline(args.budget_s)
    peak, peak_source = peak_bf16_flops(device)  # first: a bad override fails before any work
    from services.trainer.model.features import ContrastiveModel
    from services.trainer.model.factory import create_model

    ours_sdpa, theirs = paired_models(sizes.vision_model, sizes.text_model, attn_implementation="sdpa")
    ours_eager = create_model(sizes.vision_model, sizes.text_model, attn_implementation="eager", precision="fp32")
    ours_eager.load_state_dict(ours_sdpa.state_dict())
    ours = {"sdpa": ours_sdpa.to(device), "eager": ours_eager.to(device)}
    sides = {attn: Side(f"ours_{attn}", model, ContrastiveModel(model)) for attn, model in ours.items()}
    theirs = theirs.to(device).train()
    # Chinese-CLIP's forward(image, text) finds the text mask itself from the padding id.
    original = Side("original", theirs, lambda pixels, input_ids, attention_mask: theirs(pixels, input_ids))
    inputs = (image_batch(sizes.train_batch, sizes.vision_model, device), *text_batch(sizes.train_batch, device))

    flops_per_sample = guarded(lambda: count_flops_per_sample(sides["sdpa"], inputs, device))
    flop_count = {
        "method": "torch.utils.flop_counter.FlopCounterMode over one forward + contrastive loss + backward of our "
                  "model (bf16 autocast, no checkpointing): matmuls, convolutions, attention; per sample x batch",
        "flops_per_sample": flops_per_sample,
        "flops_per_step_at_batch": None if failed(flops_per_sample) else flops_per_sample * sizes.train_batch,
        "peak_bf16_flops": peak, "peak_source": peak_source,
    }
    if failed(flops_per_sample):
        flops_per_sample = None

    results, original_by_setting = [], {}
    for precision, attention, checkpointing in SETTINGS:
        entry = {"precision": precision, "attention": attention, "grad_checkpointing": checkpointing}
        results.append(entry)
        if deadline.passed():
            entry["skipped"] = "time budget spent"
            continue
        switched = guarded(lambda: set_grad_checkpointing(ours[attention], original.model, checkpointing))
        if failed(switched):
            entry["error"] = switched["error"]
            continue
        entry["ours"] = guarded(lambda: measure(sides[attention], inputs, precision, device,
                                                sizes.warmup_steps, sizes.timed_steps))
        key = (precision, checkpointing)
        if key in original_by_setting:
            entry["original"] = original_by_setting[key]
            entry["original_measured_with"] = "sdpa row (Chinese-CLIP's model has one attention path)"
        else:
            entry["original"] = original_by_setting[key] = guarded(
                lambda: measure(original, inputs, precision, device, sizes.warmup_steps, sizes.timed_steps))
        if not failed(entry["ours"]) and not failed(entry["original"]):
            entry["ours_over_original"] = round(entry["ours"]["samples_per_s"] / entry["original"]["samples_per_s"], 3)
        entry["ours_mfu"] = mfu(flops_per_sample, peak, entry["ours"])
        entry["original_mfu"] = mfu(flops_per_sample, peak, entry["original"])
        print(f"throughput {precision}/{attention}/ckpt={checkpointing}: samples/s ours "
              f"{brief(entry['ours'])}, original {brief(entry['original'])}", flush=True)

    largest = guarded(lambda: largest_batch(sides["sdpa"], ours["sdpa"], sizes, device, deadline, flops_per_sample,
                                            peak))
    headline = next(r for r in results if (r["precision"], r["attention"], r["grad_checkpointing"]) == HEADLINE)
    ratio, headline_mfu = headline.get("ours_over_original"), headline.get("ours_mfu")
    result = {
        "scale": args.scale, "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "vision_model": sizes.vision_model, "text_model": sizes.text_model, "batch": sizes.train_batch,
        "flop_count": flop_count, "headline": headline, "settings": results, "largest_batch": largest,
        "targets": {
            "ours_over_original_samples_per_s": {"value": ratio, "target": ">= 1.0",
                                                 "met": None if ratio is None else ratio >= 1.0},
            f"mfu_bf16_sdpa_batch{sizes.train_batch}": {"value": headline_mfu, "target": f">= {MFU_TARGET}",
                                                        "met": None if headline_mfu is None else headline_mfu >= MFU_TARGET},
            "published": PUBLISHED,
        },
        "ok": ratio is not None,
    }
    write_result(args.out, result)


def largest_batch(side: Side, model, sizes, device, deadline: Deadline, flops_per_sample, peak) -> dict:
    """Doubling batches (bf16, sdpa, checkpointing on) until one does not fit, the cap, or the budget."""
    switched = guarded(lambda: set_grad_checkpointing(model, None, True))
    if failed(switched):
        return switched
    tried, stopped_by = [], "cap"
    batch = sizes.train_batch * 2
    while batch <= sizes.largest_batch_cap:
        if deadline.passed():
            stopped_by = "time budget spent"
            break
        try:
            inputs = (image_batch(batch, sizes.vision_model, device), *text_batch(batch, device))
            measured = measure(side, inputs, "bf16", device, warmup=1, timed=2)
        except torch.OutOfMemoryError as exc:
            tried.append({"batch": batch, "fits": False, "error": str(exc).splitlines()[0][:200]})
            stopped_by = "out of memory"
            break
        finally:
            inputs = None
            side.optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tried.append({"batch": batch, "fits": True, **measured, "mfu": mfu(flops_per_sample, peak, measured)})
        print(f"largest batch: {tried[-1]}", flush=True)
        batch *= 2
    fitting = [t for t in tried if t["fits"]]
    return {"precision": "bf16", "attention": "sdpa", "grad_checkpointing": True, "tried": tried,
            "largest_fitting": fitting[-1]["batch"] if fitting else None, "stopped_by": stopped_by}


if __name__ == "__main__":
    main()
