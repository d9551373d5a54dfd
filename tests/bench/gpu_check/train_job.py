"""Step 4: one training job the way the job runner launches it, on a synthetic data set.

`cnclip make-synthetic` and `cnclip build-lmdb` make the data; the NCCL probe runs the trainer's
collectives under torchrun (a one-rank job opens no process group, so the job alone would not);
then `torchrun --standalone --nproc-per-node 1 -m -- services.trainer.cli train ...` trains with
validation at the end. The checkpoint it writes must load into Chinese-CLIP's own model with
strict=True (after the two steps Chinese-CLIP's own evaluation takes: strip DDP's `module.`,
drop the unused BERT pooler) and give the features our loader gives.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.bench.gpu_check.common import (
    ROOT, SIZES, check_device, failed, guarded, image_batch, parse_args, text_batch, write_result,
)

JOB_NAME = "gpu_check"
PRECISION = "amp"  # the trainer's default: fp16 autocast with the loss scaler on CUDA
CLI = [sys.executable, "-m", "services.trainer.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "--"]

# --- Validation with online learning from the crawler cache ---------------------------------
# One more step from the job's checkpoint, then a validation pass with `--online cache`: a step
# per validation batch (`--online-schedule validation --online-step-ratio none`: the one training step would earn none) on the
# pictures the demo shop serves for each query (cached beforehand, so no browser is needed on
# the GPU machine).
ONLINE_CACHE_OPTION = "--online-images"


def online_cache_validation(train_help: str, train_args: list[str], data: Path, work: Path,
                            checkpoint: Path, steps: int) -> dict:
    if ONLINE_CACHE_OPTION not in train_help:
        return {"ran": False, "reason": f"`cnclip train` has no {ONLINE_CACHE_OPTION} option"}
    from tests.fixtures_online import fill_cache

    texts = [json.loads(line)["text"] for line in (data / "valid_texts.jsonl").read_text().splitlines() if line.strip()]
    fill_cache(work / "online_cache", "valid", texts)
    events_path = work / "online_events.jsonl"
    args = [a for a in train_args]
    for flag, value in (("--name", JOB_NAME + "-online"), ("--events", str(events_path)),
                        ("--max-steps", str(steps + 1)), ("--valid-step-interval", "1")):
        args[args.index(flag) + 1] = value
    args += ["--resume", str(checkpoint), "--online", "cache", "--online-cache-dir", str(work / "online_cache")]
    if "--online-step-ratio" in train_help:
        args += ["--online-schedule", "validation", "--online-step-ratio", "none"]
    record = run_logged(TORCHRUN + ["services.trainer.cli"] + args, work / "train_online.log")
    events = read_events(events_path)
    online = [e["data"] for e in events if e["type"] == "online"]
    passes = [e["data"] for e in events if e["type"] == "online_pass"]
    record.update(ran=True, batches=len(online), pairs=sum(o["pairs"] for o in online),
                  steps=sum(1 for o in online if o["loss"] is not None),
                  wait_ms_total=round(sum(o["wait_ms"] for o in online), 1),
                  pass_wall_s=passes[-1]["wall_s"] if passes else None)
    record["ok"] = record["rc"] == 0 and record["steps"] == record["batches"] > 0
    return record


def run_logged(cmd: list[str], log: Path, timeout_s: float | None = None) -> dict:
    started = time.perf_counter()
    with log.open("w") as out:
        completed = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
    record = {"rc": completed.returncode, "seconds": round(time.perf_counter() - started, 2), "log": str(log)}
    if completed.returncode != 0:
        record["error"] = f"exit code {completed.returncode}: " + log.read_text(errors="replace")[-1500:]
    return record


def read_events(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise_events(events: list[dict]) -> dict:
    steps = [e["data"] for e in events if e["type"] == "train_step"]
    rates = [s["samples_per_s"] for s in steps if s.get("samples_per_s")]
    # The first report includes start-up (CUDA context, first kernels, loader workers): leave it out.
    steady = rates[1:] or rates
    validations = [e["data"] for e in events if e["type"] == "validation"]
    results = [e["data"] for e in events if e["type"] == "result"]
    return {
        "last_reported_step": steps[-1]["step"] if steps else None,
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "samples_per_s_median": sorted(steady)[len(steady) // 2] if steady else None,
        "validation": {k: validations[-1].get(k) for k in ("step", "loss", "acc", "r1", "r5", "r10", "mr")}
        if validations else None,
        "checkpoints": [e["data"]["path"] for e in events if e["type"] == "checkpoint"],
        "errors": [e["data"].get("message") for e in events if e["type"] == "log"],
        "result_steps": results[-1].get("steps") if results else None,
    }


def load_in_chinese_clip(checkpoint: Path, vision_model: str, text_model: str, device: torch.device) -> dict:
    """Chinese-CLIP's evaluation loading, strict, then features against our own loader's model."""
    from services.trainer.model.checkpoint import load_model
    from services.trainer.model.configs import text_tower, vision_tower
    from services.trainer.model.features import encode_image, encode_text
    from tests.fixtures_trainer import original_clip

    saved = torch.load(checkpoint, map_location="cpu")
    state = {key.removeprefix("module."): value for key, value in saved["state_dict"].items()
             if "bert.pooler" not in key}
    theirs = original_clip(vision_tower(vision_model), text_tower(text_model))
    theirs.load_state_dict(state, strict=True)
    ours, _ = load_model(checkpoint, vision_model=vision_model, text_model=text_model, attn_implementation="sdpa",
                         precision="fp32")
    theirs, ours = theirs.to(device).eval(), ours.to(device).eval()
    pixels = image_batch(4, vision_model, device)
    input_ids, attention_mask = text_batch(4, device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        pairs = {"image": (encode_image(ours, pixels), theirs.encode_image(pixels)),
                 "text": (encode_text(ours, input_ids, attention_mask), theirs.encode_text(input_ids))}
    relative = {tower: ((a - b).abs().max() / b.abs().max()).item() for tower, (a, b) in pairs.items()}
    return {"strict_load": "ok", "checkpoint_step": saved.get("step"), "checkpoint_epoch": saved.get("epoch"),
            "features_max_relative_diff": relative, "features_agree": all(v <= 1e-4 for v in relative.values())}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes, device = SIZES[args.scale], check_device()
    work = Path(args.work).resolve()
    data, logs, events_path = work / "data", work / "experiments", work / "events.jsonl"
    result: dict = {"scale": args.scale, "device": str(device), "vision_model": sizes.vision_model,
                    "text_model": sizes.text_model, "batch": sizes.job_batch, "max_steps": sizes.job_steps,
                    "precision": PRECISION}

    result["make_synthetic"] = run_logged(
        CLI + ["make-synthetic", "--out", str(data), "--n-train", str(sizes.job_train_texts),
               "--n-valid", str(sizes.job_valid_texts), "--n-test", "1", "--image-size", str(sizes.job_image_size)],
        work / "make_synthetic.log")
    result["build_lmdb"] = run_logged(
        CLI + ["build-lmdb", "--data-dir", str(data), "--splits", "train,valid", "--on-error", "fail"],
        work / "build_lmdb.log")
    result["collectives"] = guarded(lambda: collectives(work))

    train_help = subprocess.run(CLI + ["train", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    train_args = [
        "train", "--train-data", str(data / "lmdb" / "train"), "--val-data", str(data / "lmdb" / "valid"),
        "--vision-model", sizes.vision_model, "--text-model", sizes.text_model,
        "--batch-size", str(sizes.job_batch), "--valid-batch-size", str(sizes.job_batch),
        "--max-steps", str(sizes.job_steps), "--precision", PRECISION, "--device", device.type,
        "--num-workers", str(sizes.job_workers), "--valid-num-workers", str(min(sizes.job_workers, 4)),
        "--valid-epoch-interval", "-1", "--valid-step-interval", str(sizes.job_steps),
        "--save-epoch-frequency", str(sizes.job_steps), "--log-interval", str(max(1, sizes.job_steps // 10)),
        "--warmup", str(max(1, sizes.job_steps // 10)), "--logs", str(logs), "--name", JOB_NAME,
        "--events", str(events_path), "--no-progress",
    ]
    job = run_logged(TORCHRUN + ["services.trainer.cli"] + train_args, work / "train.log")
    job["events"] = summarise_events(read_events(events_path))
    result["train"] = job

    checkpoint = logs / JOB_NAME / "checkpoints" / "epoch_latest.pt"
    result["chinese_clip_load"] = (
        guarded(lambda: load_in_chinese_clip(checkpoint, sizes.vision_model, sizes.text_model, device))
        if checkpoint.is_file() else {"error": f"no checkpoint at {checkpoint}"})
    result["online_cache_validation"] = (
        guarded(lambda: online_cache_validation(train_help, train_args, data, work, checkpoint, sizes.job_steps))
        if checkpoint.is_file() else {"error": f"no checkpoint at {checkpoint}"})
    result["ok"] = (not failed(job) and job["events"]["result_steps"] == sizes.job_steps
                    and job["events"]["validation"] is not None
                    and not failed(result["collectives"]) and result["collectives"].get("ok") is True
                    and not failed(result["chinese_clip_load"]) and result["chinese_clip_load"]["features_agree"]
                    and not failed(result["online_cache_validation"])
                    and result["online_cache_validation"].get("ok") is True)
    write_result(args.out, result)


def collectives(work: Path) -> dict:
    out = work / "collectives.json"
    run = run_logged(TORCHRUN + ["tests.bench.gpu_check.nccl_probe", "--out", str(out)], work / "collectives.log")
    if failed(run):
        return run
    return json.loads(out.read_text()) | {"seconds": run["seconds"]}


if __name__ == "__main__":
    main()
