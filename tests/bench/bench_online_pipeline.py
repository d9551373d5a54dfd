"""Online validation pipeline: does crawling ahead hide the crawl behind the model's work?

Real Redis, the demo shop answering every page after ``--page-delay`` seconds (as a real site
does), two Celery crawler workers with headless Chromium, a tiny model on the CPU. The same
validation queries (the valid split of a synthetic set) go through four runs:

a. crawl only: every query submitted through the trainer's CrawlClient, all results awaited;
b. offline validation: ``Trainer.validate()`` with online learning off;
c. online validation: the same Trainer with ``online="live"`` (crawl ahead of use);
d. the prototype's order with the same crawlers: each batch's queries are crawled when the
   batch comes up, then the model steps (no crawl ahead).

Each crawling run gets a fresh image cache. One more run, e, repeats c from the images c
cached (``online="cache"``): the online pass's own compute with no crawl, so that
c / max(a, e) tells how much of the crawl is hidden once the steps' cost is counted.

Then two whole jobs (``Trainer.fit``: ``--train-steps`` steps, one validation pass at the end):

f. online live: the job asks for the validation queries when it starts (``prefetch``), so the
   crawl runs while the model trains;
g. the prototype's order: nothing is asked before the pass, each batch crawled when it comes up.

Figures: c / max(a, b) (target <= 1.15) and g / f, the jobs' validation passes (target >= 3);
all are ratios of runs in this script, so machine load mostly cancels. d / c is printed too:
within one pass alone the crawl pool's throughput bounds both orders alike.

    .venv/bin/python tests/bench/bench_online_pipeline.py [--queries 64] [--page-delay 0.5]

Prints one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from services.trainer.data.lmdb_build import build_lmdb  # noqa: E402
from services.trainer.online.client import CrawlClient as TrainerCrawlClient  # noqa: E402
from services.trainer.online.learner import OnlineLearner, PassTotals  # noqa: E402
from services.trainer.train.config import TrainConfig  # noqa: E402
from services.trainer.engine.distributed import DistEnv  # noqa: E402
from services.trainer.train.run import build_trainer  # noqa: E402
from shared.synthetic.dataset import make_synthetic_dataset  # noqa: E402
from tests.bench.online_stack import online_stack  # noqa: E402

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


class SequentialLearner(OnlineLearner):
    """The prototype's order: nothing is asked for ahead of use; each batch's queries are
    crawled when the batch comes up, and the step waits for all of them."""

    @classmethod
    def like(cls, learner: OnlineLearner) -> "SequentialLearner":
        return cls(source=learner.source, runner=learner.runner, env=learner.env,
                   transform=learner.transform, emit=learner.emit, seed=learner.seed,
                   images_per_query=learner.images_per_query,
                   login_timeout_s=learner.login_timeout_s, levers=learner.levers)

    def prefetch(self, split: str, texts: Sequence[str]) -> None:
        pass  # the prototype asks for nothing before the pass

    def before_eval(self, split: str, texts: Sequence[str], *, epoch: int | None = None,
                    train_step: int | None = None, batches: int | None = None) -> None:
        self._wait_for_login()
        self._totals = PassTotals()
        self.levers.budget.start_pass(train_step, batches)

    def learn(self, split, batch_index, texts, input_ids, attention_mask):
        self.source.start_pass(split, list(texts), self.pass_index)
        try:
            return super().learn(split, batch_index, texts, input_ids, attention_mask)
        finally:
            self.source.end_pass()

    def after_eval(self, split: str) -> None:
        totals = self._totals or PassTotals()
        self.emit("online_pass", split=split, pass_index=self.pass_index, queries=totals.queries,
                  pairs=totals.pairs, steps=totals.steps, missing=dict(totals.missing),
                  wall_s=round(time.perf_counter() - totals.started, 3))
        self.pass_index += 1
        self._totals = None


class Recorder:
    """An event sink that keeps the online passes' summaries."""

    def __init__(self) -> None:
        self.passes: list[dict[str, Any]] = []
        self.wait_ms = 0.0  # time the online steps spent waiting for crawled images

    def emit(self, type: str, **data: Any) -> None:
        if type == "online_pass":
            self.passes.append(data)
        elif type == "online":
            self.wait_ms += data["wait_ms"]

    def close(self) -> None:
        pass


def make_data(root: Path, n_valid: int) -> Path:
    make_synthetic_dataset(root / "data", n_train=64, n_valid=n_valid, n_test=8, seed=0, image_size=64)
    report = build_lmdb(root / "data", "train,valid", root / "lmdb", on_error="fail")
    if not report.ok:
        raise RuntimeError(report.summary())
    return root / "lmdb"


def config(lmdb: Path, workdir: Path, name: str, valid_batch_size: int, **online: Any) -> TrainConfig:
    made = TrainConfig(train_data=str(lmdb / "train"), val_data=str(lmdb / "valid"), logs=str(workdir / "runs"),
                       name=name, job_id=f"{name}-{time.time_ns()}", vision_model="tiny", text_model="tiny",
                       precision="fp32", device="cpu", num_workers=0, valid_num_workers=0, batch_size=16,
                       valid_batch_size=valid_batch_size, max_steps=1, warmup=1, lr=1e-4, seed=0,
                       no_progress=True, **online)
    made.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return made


def crawl_only(redis_url: str, texts: Sequence[str], images: int) -> dict[str, Any]:
    client = TrainerCrawlClient(redis_url, job_id=f"crawl-only-{time.time_ns()}", rank=0)
    try:
        started = time.monotonic()
        wanted = {client.submit(client.make_request(text, split="valid", pass_index=0, n_images=images,
                                                    ttl_s=3600)).request_id for text in dict.fromkeys(texts)}
        statuses: dict[str, str] = {}
        deadline = started + 1800
        while wanted - statuses.keys():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(wanted - statuses.keys())} crawl results never came")
            for result in client.collect(block_ms=500):
                statuses[result.request_id] = result.status
        seconds = time.monotonic() - started
    finally:
        client.close()
    return {"seconds": round(seconds, 2), "queries": len(wanted),
            "ok": sum(status == "ok" for status in statuses.values())}


def validate(made: TrainConfig, sink: Recorder, sequential: bool = False) -> dict[str, Any]:
    trainer = build_trainer(made, CPU, sink)
    try:
        if sequential:
            trainer.online = SequentialLearner.like(trainer.online)
        started = time.monotonic()
        result = trainer.validate(0)
        seconds = time.monotonic() - started
    finally:
        trainer.close()
    out = {"seconds": round(seconds, 2), "mr": round(result.mr, 2), "texts": result.texts}
    if sink.passes:
        last = sink.passes[-1]
        out.update(pairs=last["pairs"], steps=last["steps"], missing=last["missing"],
                   waited_for_images_s=round(sink.wait_ms / 1000, 2))
    return out


def job(lmdb: Path, workdir: Path, name: str, args: argparse.Namespace, sequential: bool = False) -> dict[str, Any]:
    """A whole training job with online learning live and one validation pass, at its end."""
    made = config(lmdb, workdir, name, args.valid_batch_size, online="live",
                  online_cache_dir=str(workdir / f"cache-{name}"), online_wait_s=1800,
                  online_images=args.images, online_dedupe_gallery=True)
    made = made.model_copy(update={"max_steps": args.train_steps, "valid_epoch_interval": None,
                                   "valid_step_interval": args.train_steps})
    sink = Recorder()
    trainer = build_trainer(made, CPU, sink)
    try:
        if sequential:
            trainer.online = SequentialLearner.like(trainer.online)
        started = time.monotonic()
        trainer.fit()
        seconds = time.monotonic() - started
    finally:
        trainer.close()
    if len(sink.passes) != 1:
        raise RuntimeError(f"the job made {len(sink.passes)} validation passes, not one")
    last = sink.passes[-1]
    return {"seconds": round(seconds, 2), "validation_pass_s": last["wall_s"], "pairs": last["pairs"],
            "steps": last["steps"], "missing": last["missing"],
            "waited_for_images_s": round(sink.wait_ms / 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=64, help="validation queries")
    parser.add_argument("--valid-batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=5, help="images crawled per query")
    parser.add_argument("--page-delay", type=float, default=0.5, help="seconds the shop waits before each page")
    parser.add_argument("--train-steps", type=int, default=120, help="training steps of the jobs f and g")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data, runs, caches)")
    args = parser.parse_args()
    if args.queries < 2 or args.valid_batch_size < 1 or args.page_delay < 0:
        parser.error("--queries must be >= 2, --valid-batch-size >= 1, --page-delay >= 0")

    workdir = Path(tempfile.mkdtemp(prefix="bench-online-pipeline-"))
    lmdb = make_data(workdir, args.queries)
    stack = None
    try:
        with online_stack(workdir) as stack:
            shop, redis_url = stack.shop, stack.redis_url
            shop.set_faults(page_delay_s=args.page_delay)
            load_before = os.getloadavg()

            def live(name: str) -> TrainConfig:
                return config(lmdb, workdir, name, args.valid_batch_size, online="live",
                              online_cache_dir=str(workdir / f"cache-{name}"), online_wait_s=1800,
                              online_images=args.images, online_dedupe_gallery=True)

            offline_config = config(lmdb, workdir, "offline", args.valid_batch_size)
            texts = list(build_trainer(offline_config, CPU).valid_data.rank_texts())
            # A few queries first, so that browsers, shop and model code are warm for every run.
            crawl_only(redis_url, [f"预热 {text}" for text in texts[:4]], args.images)
            validate(offline_config, Recorder())

            crawl = crawl_only(redis_url, texts, args.images)
            offline = validate(offline_config, Recorder())
            online = validate(live("online"), Recorder())
            sequential = validate(live("sequential"), Recorder(), sequential=True)
            # The online pass's own work without any crawl: the same steps on the images that run c (online) cached.
            from_cache = validate(config(lmdb, workdir, "cached", args.valid_batch_size, online="cache",
                                         online_cache_dir=str(workdir / "cache-online"),
                                         online_images=args.images, online_dedupe_gallery=True), Recorder())
            job_online = job(lmdb, workdir, "job-online", args)
            job_sequential = job(lmdb, workdir, "job-sequential", args, sequential=True)
            load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    leftovers = stack.leftovers

    hidden = online["seconds"] / max(crawl["seconds"], offline["seconds"])
    speedup = job_sequential["validation_pass_s"] / job_online["validation_pass_s"]
    summary = {
        "benchmark": "online_pipeline",
        "browsers": "2 crawler workers, headless Chromium",
        "page_delay_s": args.page_delay,
        "images_per_query": args.images,
        "valid_batch_size": args.valid_batch_size,
        "queries": crawl["queries"],
        "validation_pairs": len(texts),
        "cpu_count": os.cpu_count(),
        "load_average_1min": [round(load_before[0], 1), round(load_after[0], 1)],
        "a_crawl_only": crawl,
        "b_offline_validation": offline,
        "c_online_validation": online,
        "d_sequential_validation": sequential,
        "e_online_validation_from_cache": from_cache,
        "f_job_online": job_online,
        "g_job_sequential": job_sequential,
        "online_over_max_crawl_cached": round(online["seconds"] / max(crawl["seconds"], from_cache["seconds"]), 3),
        "online_over_max_crawl_offline": round(hidden, 3),
        "pass_sequential_over_online": round(sequential["seconds"] / online["seconds"], 3),
        "job_pass_sequential_over_online": round(speedup, 3),
        "target_online_over_max": 1.15,
        "target_job_pass_sequential_over_online": 3.0,
        "meets_overlap_target": hidden <= 1.15,
        "meets_speedup_target": speedup >= 3.0,
        "orphan_processes": [str(p) for p in leftovers],
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
