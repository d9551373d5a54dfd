"""Online learning efficacy: recall on concepts held out of training, with and without it.

A synthetic set whose training split never shows some attributes (its manifest marks each
query ``seen`` or not), a tiny model on the CPU, the demo shop crawled by real crawler workers
(headless Chromium) over real Redis. Runs, all from the same seed and data:

- offline: train, validate each epoch with online learning off;
- online live: the same training with ``online="live"``: before each validation batch one
  step on crawled images of its queries (the crawl is written to a fresh cache);
- online cache: the same training again from that cache only (should repeat the live run);
- test-time online: ``cnclip predict --online live --online-max-epochs 5`` on the offline
  model (then ``--online cache`` on the same images for each further ``--tta-lr``).

Every model predicts the test split through ``cnclip predict``; mean recall (MUGE MR, percent)
comes from the project's evaluator, ``recall_metrics``, restricted to the unseen-concept and
the seen-concept test queries. Targets: online >= +25 MR on unseen vs offline with <= 1 MR lost
on seen; test-time online >= +20 MR on unseen.

    .venv/bin/python tests/bench/bench_online_efficacy.py [--steps 200] [--tta-lr 5e-5,1e-3]

Prints one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from services.trainer.data.lmdb_build import build_lmdb  # noqa: E402
from shared.muge import read_ground_truth, read_predictions, recall_metrics  # noqa: E402
from services.trainer.train.config import TrainConfig  # noqa: E402
from services.trainer.train.distributed import DistEnv  # noqa: E402
from services.trainer.train.loop import Trainer  # noqa: E402
from shared.synthetic.dataset import make_synthetic_dataset  # noqa: E402
from tests.bench.online_stack import online_stack  # noqa: E402

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
TINY = ["--vision-model", "tiny", "--text-model", "tiny", "--precision", "fp32", "--device", "cpu"]


class Recorder:
    """An event sink that keeps the online passes' summaries and the validations' MR."""

    def __init__(self) -> None:
        self.passes: list[dict[str, Any]] = []
        self.valid_mr: list[float] = []

    def emit(self, type: str, **data: Any) -> None:
        if type == "online_pass":
            self.passes.append(data)
        elif type == "validation":
            self.valid_mr.append(round(data["mr"], 2))

    def close(self) -> None:
        pass


def online_summary(passes: list[dict[str, Any]]) -> dict[str, Any]:
    missing: dict[str, int] = {}
    for record in passes:
        for reason, n in record["missing"].items():
            missing[reason] = missing.get(reason, 0) + n
    return {"passes": len(passes), "steps": sum(p["steps"] for p in passes),
            "pairs": sum(p["pairs"] for p in passes), "missing": missing,
            "dropped_leaked": sum(p["dropped_leaked"] for p in passes)}


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.data = workdir / "data"
        self.lmdb = workdir / "lmdb"

    def make_data(self) -> None:
        args = self.args
        make_synthetic_dataset(self.data, args.n_train, args.n_valid, args.n_test, seed=args.seed,
                               image_size=args.image_size)
        report = build_lmdb(self.data, "train,valid,test", self.lmdb, on_error="fail")
        if not report.ok:
            raise RuntimeError(report.summary())
        manifest = json.loads((self.data / "manifest.json").read_text(encoding="utf-8"))
        self.seen = {t["text_id"]: t["seen"] for t in manifest["texts"]["test"]}
        self.truth = read_ground_truth(self.data / "test_texts.jsonl")

    def train(self, name: str, **online: Any) -> tuple[Path, dict[str, Any]]:
        args = self.args
        config = TrainConfig(
            train_data=str(self.lmdb / "train"), val_data=str(self.lmdb / "valid"),
            logs=str(self.workdir / "runs"), name=name, job_id=f"{name}-{time.time_ns()}",
            vision_model="tiny", text_model="tiny", precision="fp32", device="cpu", num_workers=0,
            valid_num_workers=0, batch_size=args.batch_size, valid_batch_size=args.batch_size,
            max_steps=args.steps, lr=args.lr, wd=0.01, warmup=10, seed=args.seed,
            valid_epoch_interval=args.valid_epoch_interval, no_progress=True, **online)
        config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        sink = Recorder()
        started = time.monotonic()
        trainer = Trainer(config, CPU, sink)
        try:
            trainer.fit()
        finally:
            trainer.close()
        info = {"seconds": round(time.monotonic() - started, 1), "valid_mr": sink.valid_mr}
        if sink.passes:
            info["online"] = online_summary(sink.passes)
        return config.checkpoint_dir / "epoch_latest.pt", info

    def predict(self, name: str, checkpoint: Path, *extra: str) -> dict[str, Any]:
        output = self.workdir / "predictions" / f"{name}.jsonl"
        events = self.workdir / "predictions" / f"{name}.events.jsonl"
        command = [sys.executable, "-m", "services.trainer.cli", "predict", "--resume", str(checkpoint),
                   "--image-data", str(self.lmdb / "test"), "--text-data", str(self.data / "test_texts.jsonl"),
                   "--output", str(output), "--events", str(events), "--name", name,
                   "--experiments", str(self.workdir / "adapted"), "--no-progress", *TINY, *extra]
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"predict {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        figures = self.recall(output)
        figures["seconds"] = round(time.monotonic() - started, 1)
        events_read = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
        passes = [event["data"] for event in events_read if event["type"] == "online_pass"]
        if passes:
            figures["online"] = online_summary(passes)
        return figures

    def recall(self, predictions: Path) -> dict[str, Any]:
        predicted = read_predictions(predictions, self.truth)
        out = {}
        for label, wanted in (("seen", True), ("unseen", False)):
            group = {qid: ids for qid, ids in self.truth.items() if self.seen.get(qid) == wanted}
            metrics = recall_metrics(group, predicted)
            out[f"{label}_mr"] = round(metrics["mr"], 2)
            out[f"{label}_queries"] = metrics["num_queries"]
        out["all_mr"] = round(recall_metrics(self.truth, predicted)["mr"], 2)
        return out


def progress(name: str, figures: dict[str, Any]) -> None:
    """Each run's figures as soon as they are known (the summary comes at the end)."""
    print(f"{name}: {json.dumps(figures, ensure_ascii=False)}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-valid", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="training steps (the demo's length)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003, help="training learning rate (the demo's)")
    parser.add_argument("--valid-epoch-interval", type=int, default=1)
    parser.add_argument("--online-lr", type=float, default=None,
                        help="online_lr of the online training runs (default: the schedule's current rate)")
    parser.add_argument("--tta-epochs", type=int, default=5, help="--online-max-epochs of test-time online")
    parser.add_argument("--tta-lr", default="5e-5",
                        help="comma-separated learning rates of test-time online (the first crawls live)")
    parser.add_argument("--skip-cache-run", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data, runs, caches)")
    args = parser.parse_args()
    tta_lrs = [float(x) for x in args.tta_lr.split(",") if x.strip()]
    if not tta_lrs or any(lr <= 0 for lr in tta_lrs):
        parser.error("--tta-lr needs one or more positive learning rates")
    if min(args.steps, args.batch_size, args.n_train, args.n_valid, args.n_test, args.tta_epochs) < 1:
        parser.error("sizes, steps and epochs must be positive")

    workdir = Path(tempfile.mkdtemp(prefix="bench-online-efficacy-"))
    bench = Bench(args, workdir)
    bench.make_data()
    runs: dict[str, Any] = {}
    load_before = os.getloadavg()
    stack = None
    try:
        with online_stack(workdir) as stack:
            train_cache = workdir / "cache-train"
            offline_ckpt, info = bench.train("offline")
            runs["offline"] = {"train": info, **bench.predict("offline", offline_ckpt)}
            progress("offline", runs["offline"])
            live_ckpt, info = bench.train("online-live", online="live", online_cache_dir=str(train_cache),
                                          online_wait_s=1800, online_lr=args.online_lr)
            runs["online_live"] = {"train": info, **bench.predict("online-live", live_ckpt)}
            progress("online_live", runs["online_live"])
            test_cache = workdir / "cache-test"
            for index, lr in enumerate(tta_lrs):
                mode = "live" if index == 0 else "cache"
                name = f"tta-{mode}-lr{lr:g}"
                runs[name] = {"lr": lr, "mode": mode, **bench.predict(
                    name, offline_ckpt, "--online", mode, "--online-max-epochs", str(args.tta_epochs),
                    "--online-cache-dir", str(test_cache), "--online-wait-s", "1800", "--lr", str(lr))}
                progress(name, runs[name])
            if not args.skip_cache_run:
                cache_ckpt, info = bench.train("online-cache", online="cache", online_cache_dir=str(train_cache),
                                               online_lr=args.online_lr)
                runs["online_cache"] = {"train": info, **bench.predict("online-cache", cache_ckpt)}
                progress("online_cache", runs["online_cache"])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    leftovers = stack.leftovers

    offline = runs["offline"]
    live = runs["online_live"]
    tta = [v for k, v in runs.items() if k.startswith("tta-")]
    best_tta = max(tta, key=lambda r: r["unseen_mr"])
    gain_unseen = live["unseen_mr"] - offline["unseen_mr"]
    lost_seen = offline["seen_mr"] - live["seen_mr"]
    tta_gain = best_tta["unseen_mr"] - offline["unseen_mr"]
    summary = {
        "benchmark": "online_efficacy",
        "browsers": "2 crawler workers, headless Chromium",
        "sizes": {"n_train": args.n_train, "n_valid": args.n_valid, "n_test": args.n_test,
                  "image_size": args.image_size, "steps": args.steps, "batch_size": args.batch_size,
                  "lr": args.lr, "online_lr": args.online_lr, "tta_epochs": args.tta_epochs},
        "cpu_count": os.cpu_count(),
        "load_average_1min": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "runs": runs,
        "online_unseen_gain_mr": round(gain_unseen, 2),
        "online_seen_loss_mr": round(lost_seen, 2),
        "tta_unseen_gain_mr": round(tta_gain, 2),
        "tta_best_lr": best_tta["lr"],
        "target_online_unseen_gain_mr": 25,
        "target_online_seen_loss_mr": 1,
        "target_tta_unseen_gain_mr": 20,
        "meets_online_target": gain_unseen >= 25 and lost_seen <= 1,
        "meets_tta_target": tta_gain >= 20,
        "orphan_processes": [str(p) for p in leftovers],
    }
    if "online_cache" in runs:
        cache = runs["online_cache"]
        summary["cache_repeats_live"] = all(cache[k] == live[k] for k in ("seen_mr", "unseen_mr", "all_mr"))
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
