"""Training under torchrun with two gloo ranks on the CPU: the loss falls, validation retrieves
seen concepts far above chance, and progress arrives as JSON-lines events from rank 0 only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.messages import JobEvent

ROOT = Path(__file__).resolve().parents[2]


def torchrun_train(args: list[str], nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone -m services.trainer.cli -- train ARGS`` (the ``--`` keeps torchrun
    from taking ``--logs`` as an abbreviation of its own ``--logs-specs``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "services.trainer.cli", "--", "train", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_args(data, logs: Path, name: str) -> list[str]:
    return ["--train-data", str(data.lmdb("train")), "--logs", str(logs), "--name", name,
            "--vision-model", "tiny", "--text-model", "tiny", "--num-workers", "0",
            "--valid-num-workers", "0", "--precision", "fp32", "--device", "cpu", "--no-progress"]


def read_events(path: Path) -> list[JobEvent]:
    return [JobEvent.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines()]


def chance_r1(data, texts: set, split: str = "valid") -> float:
    """Expected R@1 (percent) of a random ranking for ``texts``."""
    truth = {}
    for line in data.texts(split).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        truth[record["text_id"]] = len(record["image_ids"])
    images = data.manifest["splits"][split]["images"]
    return 100 * sum(truth[t] / images for t in texts) / len(texts)


def r1_of(predictions: Path, data, texts: set, split: str = "valid") -> float:
    truth = {}
    for line in data.texts(split).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        truth[record["text_id"]] = set(record["image_ids"])
    hits = total = 0
    for line in predictions.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["text_id"] in texts:
            total += 1
            hits += record["image_ids"][0] in truth[record["text_id"]]
    assert total == len(texts)
    return 100 * hits / total


@pytest.mark.slow
def test_two_ranks_learn_seen_concepts(make_synthetic_data, tmp_path):
    data = make_synthetic_data(n_train=600)
    events = tmp_path / "events.jsonl"
    run = torchrun_train(tiny_args(data, tmp_path, "ddp") + [
        "--val-data", str(data.lmdb("valid")), "--batch-size", "16", "--valid-batch-size", "16",
        "--max-steps", "120", "--lr", "3e-3", "--wd", "0.01", "--warmup", "10", "--log-interval", "10",
        "--valid-step-interval", "60", "--valid-epoch-interval", "-1", "--report-training-batch-acc",
        "--events", str(events)])
    assert run.returncode == 0, run.stderr[-4000:]

    kinds = [e.type for e in read_events(events)]
    steps = [e.data for e in read_events(events) if e.type == "train_step"]
    # Rank 0 alone writes events: each logged step appears once.
    assert [s["step"] for s in steps] == list(range(10, 121, 10))
    for s in steps:
        assert s["total_steps"] == 120 and s["samples_per_s"] > 0 and 0 < s["logit_scale"] <= 100
        assert 0 <= s["img2txt_acc"] <= 1 and 0 <= s["txt2img_acc"] <= 1 and s["lr"] > 0
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"], [s["loss"] for s in steps]
    assert kinds[0] == "phase" and kinds[-1] == "result" and "checkpoint" in kinds

    validations = [e.data for e in read_events(events) if e.type == "validation"]
    assert [v["step"] for v in validations] == [60, 120]
    final = validations[-1]
    manifest = data.manifest["splits"]["valid"]
    assert final["texts"] == manifest["texts"] and final["images"] == manifest["images"]
    assert final["r1"] <= final["r5"] <= final["r10"]
    assert final["mr"] == pytest.approx((final["r1"] + final["r5"] + final["r10"]) / 3)

    seen = data.seen_text_ids("valid")
    seen_r1 = r1_of(Path(final["predictions"]), data, seen)
    chance = chance_r1(data, seen)
    assert seen_r1 >= 5 * chance, (seen_r1, chance)

    run_dir = tmp_path / "ddp"
    params = json.loads((run_dir / "params.json").read_text())
    assert params["world_size"] == 2 and params["max_steps"] == 120
    log_text = (run_dir / "out.log").read_text(encoding="utf-8")
    assert "R@1" in log_text and "step 120/120" in log_text
    final_ckpt = torch.load(run_dir / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert final_ckpt["step"] == 120 and final_ckpt["name"] == "ddp"
    # 600 pairs / 32 per global batch -> 19 steps an epoch; step 120 is in epoch 7.
    assert final_ckpt["epoch"] == 7 and (run_dir / "checkpoints" / "epoch7.pt").is_file()
