"""Training step time: our ChineseCLIPModel against Chinese-CLIP's own implementation (cn_clip 1.6.0).

One step = forward of both towers, contrastive loss, backward, AdamW step. Both models hold
the same weights (ours copied into Chinese-CLIP's through the checkpoint key mapping), see the
same batch, use the same loss function and optimizer settings, and run in the same process.
Steps of the two alternate, so load from other processes on the machine hits both alike; the
figure is the ratio of median step times (ours / original; below 1.0 means ours is faster).

Cases: the tiny config (batch 32) and ViT-B-16 + RoBERTa-wwm-ext-base-chinese (batch 8), both
randomly initialised, fp32, train mode.

Usage: python tests/bench/bench_train_step.py [--device cpu|cuda] [--cases tiny,vit-b-16]
       [--attn-implementation sdpa|eager|flash_attention_2] [--precision fp32|bf16] [--threads N] [--timed N]
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.trainer.model.configs import text_tower, vision_tower  # noqa: E402
from services.trainer.model.factory import create_model  # noqa: E402
from tests.fixtures_trainer import original_clip  # noqa: E402
from services.trainer.model.features import ContrastiveModel  # noqa: E402
from services.trainer.model.keymap import transformers_to_cnclip  # noqa: E402
from services.trainer.tokenizer import tokenize  # noqa: E402

try:  # the trainer's loss, so both sides are measured with exactly what training uses
    from services.trainer.engine.loss import contrastive_loss as _trainer_loss

    def loss_of(image_features, text_features, logit_scale):
        return _trainer_loss(image_features, text_features, logit_scale, gather=False).loss
except ImportError:  # standard CLIP loss

    def loss_of(image_features, text_features, logit_scale):
        logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


CASES = {
    "tiny": dict(vision="tiny", text="tiny", batch=32, warmup=5, timed=20),
    "vit-b-16": dict(vision="ViT-B-16", text="RoBERTa-wwm-ext-base-chinese", batch=8, warmup=3, timed=5),
}
CAPTIONS = ["红色圆形的陶瓷杯子", "蓝色条纹短袖T恤", "绿色格子图案的方形抱枕，柔软舒适，适合客厅沙发", "黄色三角形",
            "黑白波点连衣裙 夏季新款 雪纺 显瘦", "紫色星形发夹", "橙色的帆布双肩背包，大容量", "白色"]


def original_model(vision_name: str, text_name: str):
    return original_clip(vision_tower(vision_name), text_tower(text_name))


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.001)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, spec: dict, device: torch.device, attn: str | None, precision: str) -> dict:
    torch.manual_seed(0)
    ours = create_model(spec["vision"], spec["text"], attn_implementation=attn, precision=precision).to(device)
    theirs = original_model(spec["vision"], spec["text"])
    theirs.load_state_dict(transformers_to_cnclip(ours.state_dict(), ddp_prefix=False))
    theirs.to(device).train()
    ours_forward = ContrastiveModel(ours)
    optimizers = {"ours": adamw(ours), "original": adamw(theirs)}

    size = vision_tower(spec["vision"]).image_size
    pixels = torch.randn(spec["batch"], 3, size, size, device=device)
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(spec["batch"])]
    input_ids, attention_mask = (t.to(device) for t in tokenize(texts))
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    def step_ours():
        optimizers["ours"].zero_grad(set_to_none=True)
        with autocast:
            image, text, scale = ours_forward(pixels, input_ids, attention_mask)
            loss = loss_of(image, text, scale)
        loss.backward()
        optimizers["ours"].step()

    def step_original():
        optimizers["original"].zero_grad(set_to_none=True)
        with autocast:
            image, text, scale = theirs(pixels, input_ids)
            loss = loss_of(image, text, scale)
        loss.backward()
        optimizers["original"].step()

    steps = {"ours": step_ours, "original": step_original}
    times: dict[str, list[float]] = {"ours": [], "original": []}
    cpu_times: dict[str, list[float]] = {"ours": [], "original": []}
    for i in range(spec["warmup"] + spec["timed"]):
        order = ("ours", "original") if i % 2 == 0 else ("original", "ours")
        for side in order:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[side]()
            synchronize(device)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if i >= spec["warmup"]:
                times[side].append(elapsed)
                cpu_times[side].append(elapsed_cpu)
            print(f"{name} step {i + 1}/{spec['warmup'] + spec['timed']} {side}: {elapsed:.3f}s wall, "
                  f"{elapsed_cpu:.3f}s cpu", file=sys.stderr, flush=True)
    ours_median, original_median = statistics.median(times["ours"]), statistics.median(times["original"])
    ours_cpu, original_cpu = statistics.median(cpu_times["ours"]), statistics.median(cpu_times["original"])
    result = {
        "vision_model": spec["vision"],
        "text_model": spec["text"],
        "batch": spec["batch"],
        "timed_steps": spec["timed"],
        "ours_median_s": round(ours_median, 5),
        "original_median_s": round(original_median, 5),
        "ratio": round(ours_median / original_median, 3),
        # CPU seconds of the process: less disturbed by other processes than wall time.
        "ours_median_cpu_s": round(ours_cpu, 5),
        "original_median_cpu_s": round(original_cpu, 5),
        "cpu_ratio": round(ours_cpu / original_cpu, 3),
        "attn_implementation": ours.config._attn_implementation,
    }
    print(f"{name}: {json.dumps(result)}", flush=True)
    del ours, theirs, optimizers
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--attn-implementation", default=None)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--timed", type=int, default=None, help="timed steps per side (default: per case)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timed:
        for spec in CASES.values():
            spec["timed"] = args.timed
    device = torch.device(args.device)
    results = {name: run_case(name, CASES[name], device, args.attn_implementation, args.precision)
               for name in args.cases.split(",")}
    summary = {
        "benchmark": "train_step",
        "device": str(device),
        "precision": args.precision,
        "torch_threads": torch.get_num_threads(),
        "cases": results,
        "ratios": {name: r["ratio"] for name, r in results.items()},
        "cpu_ratios": {name: r["cpu_ratio"] for name, r in results.items()},
        "target": "ratio <= 1.0",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
