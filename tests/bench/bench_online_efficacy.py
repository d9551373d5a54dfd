"""Online learning efficacy over a grid of data sets: does it pay on every one, not on one?

Each data set is a synthetic MUGE set whose training split never shows some attribute values
(``--held-out``, several sets separated by ``;``) made from a seed (``--seeds``); its
validation and test queries mix seen concepts with unseen ones. A tiny model trains on the CPU;
the demo shop (``--wrong-item-rate``: the share of results showing the wrong item) is crawled by
real crawler workers (headless Chromium) over real Redis. For every data set:

- offline: train with validation, online off; ``--noise-floor`` trains it again with the next
  training seed (row kind ``offline_reseeded``): its "closed" and "seen_lost" are what one run
  of one recipe differs from another by chance, the floor under any single set's figure;
- online, for each ``--configs`` (sets of online options) and each ``--schedules`` (validation
  every epoch, every N steps): the first run of each crawl share (``online_crawl_share``: active
  crawling asks for fewer queries) and number of images (``online_images``) crawls live into a
  fresh cache of its own, its crawl requests counted, and every other run of those replays it;
  ``--cache-repeat`` also replays each live run from its cache (every picture there from the
  start; the same weights whatever the validation schedule);
- test-time online on the offline model, for each ``--tta-configs``: ``online_max_epochs``
  passes over the test queries at ``--tta-lr`` (live or replayed, as above).

Further wrong-item rates run the first configuration and schedule, and the first test-time
configuration, live, on the first seed's data sets. Configurations after the first run on the
first schedule only. Every model predicts the test split; mean recall (MUGE MR) is computed by
the project's evaluator on the seen and unseen test queries apart. A run's gain is the share of
the offline seen/unseen gap it closes: ``closed = (unseen MR - offline unseen MR) / (offline
seen MR - offline unseen MR)``; ``seen_lost = offline seen MR - seen MR``.

    .venv/bin/python tests/bench/bench_online_efficacy.py --seeds 0,1,2 \\
        --held-out "colour=purple,category=shoe;colour=green,category=mug,pattern=striped;colour=orange,category=bag" \\
        --wrong-item-rate 0.2,0.5 --rows grid.jsonl

Each run's row is printed (stderr) and appended to ``--rows`` as it ends; the summary (mean,
standard deviation and worst data set of every row kind, and the targets) is one JSON object
on the last line of stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from services.trainer.data.lmdb_build import build_lmdb  # noqa: E402
from services.trainer.predict.config import PredictConfig  # noqa: E402
from services.trainer.predict.run import predict  # noqa: E402
from services.trainer.train.config import TrainConfig  # noqa: E402
from services.trainer.engine.distributed import DistEnv  # noqa: E402
from services.trainer.train.run import build_trainer  # noqa: E402
from shared.image_cache import ImageCache  # noqa: E402
from shared.muge import read_ground_truth, read_predictions, recall_metrics  # noqa: E402
from shared.options import OnlineOptions, crawl_share  # noqa: E402
from shared.synthetic.dataset import make_synthetic_dataset  # noqa: E402
from tests.bench.online_stack import online_stack  # noqa: E402

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
TINY = dict(vision_model="tiny", text_model="tiny", precision="fp32", device="cpu")
# The prototype's online learning: one step per validation batch on each query's first picture
# (test time: picture pass mod K), no filter, no replay, the adapted weights as they are.
# Every query crawled (no active crawling).
PROTOTYPE = dict(online_schedule="validation", online_step_ratio=None, online_batch_steps=1, online_cycle_images=False, online_keep_images=None,
                 online_replay=0.0, online_interpolate=1.0, online_crawl_share=None)
CRAWL_ALL = dict(online_crawl_share=None)
CRAWL_HALF = dict(online_crawl_share=0.5)
# The online steps at the validation passes' batches (the budget earned since the last pass).
AT_VALIDATION = dict(online_schedule="validation")
# For a noisy shop: more pictures per query, each judged by its two nearest others.
NOISY_SHOP = dict(online_images=8, online_agreement_neighbours=2)
PRESETS: dict[str, dict[str, Any]] = {"default": {}, "prototype": PROTOTYPE, "all": CRAWL_ALL, "half": CRAWL_HALF,
                                      "validation": AT_VALIDATION, "noisy": NOISY_SHOP}
# Targets over the grid (shares of the offline gap closed; MR points lost on seen concepts).
TARGETS = {"online_closed_mean": 0.75, "online_closed_worst": 0.4, "online_seen_lost_max": 1.0,
           "tta_closed_mean": 0.75, "tta_closed_worst": 0.4, "tta_seen_lost_max": 2.0,
           "noisy_share_of_gain": 0.8, "schedule_closed_spread": 0.1}


def parse_held_out(text: str) -> list[dict[str, tuple[str, ...]]]:
    """``colour=purple,category=shoe;colour=green`` -> one mapping per set (values of one
    attribute joined with ``+``: ``colour=purple+green``)."""
    sets = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        held: dict[str, tuple[str, ...]] = {}
        for item in part.split(","):
            name, _, values = item.partition("=")
            if not values:
                raise ValueError(f"--held-out: {item!r} is not attribute=value")
            held[name.strip()] = held.get(name.strip(), ()) + tuple(v.strip() for v in values.split("+"))
        sets.append(held)
    if not sets:
        raise ValueError("--held-out names no set")
    return sets


def parse_config(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` (a preset) or ``NAME:option=value,option=value`` (on top of the defaults; an
    option of OnlineOptions or online_lr; ``none`` for an unset value)."""
    name, _, body = spec.partition(":")
    if not body:
        if name not in PRESETS:
            raise ValueError(f"unknown configuration {name!r}; presets: {', '.join(PRESETS)}")
        return name, dict(PRESETS[name])
    values: dict[str, Any] = {}
    for item in body.split(","):
        key, _, raw = item.partition("=")
        key = key.strip()
        if key not in OnlineOptions.model_fields:
            raise ValueError(f"{key!r} is not an online option")
        values[key] = None if raw.strip().lower() == "none" else raw.strip()
    return name, OnlineOptions(**{**values, "online": "cache"}).model_dump(include=set(values))


def held_out_label(held: dict[str, tuple[str, ...]]) -> str:
    return ",".join(f"{k}={'+'.join(v)}" for k, v in held.items())


@dataclass
class DataSet:
    label: str
    root: Path
    seen: dict[Any, bool]
    truth: dict[Any, list[Any]]

    @property
    def lmdb(self) -> Path:
        return self.root / "lmdb"

    @property
    def texts(self) -> Path:
        return self.root / "data" / "test_texts.jsonl"


class Recorder:
    """An event sink that keeps the online passes and the validations' MR."""

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
            "dropped_leaked": sum(p["dropped_leaked"] for p in passes),
            "dropped_disagreeing": sum(p.get("dropped_disagreeing") or 0 for p in passes),
            "replay_pairs": sum(p.get("replay_pairs") or 0 for p in passes),
            "skipped_active": sum(p.get("skipped_active") or 0 for p in passes),
            "submitted": sum((p.get("source") or {}).get("submitted", 0) for p in passes)}


def share_label(options: dict[str, Any], *, test_time: bool) -> str:
    """Runs that ask the crawler for the same queries and number of images share a cache (named
    by their share, and K when it is not the default)."""
    share = crawl_share(options.get("online_crawl_share", OnlineOptions.model_fields["online_crawl_share"].default),
                        test_time=test_time)
    label = "all" if share is None else f"{share:g}"
    images = int(options.get("online_images", OnlineOptions.model_fields["online_images"].default))
    return label if images == OnlineOptions.model_fields["online_images"].default else f"{label}-k{images}"


class Grid:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.rows: list[dict[str, Any]] = []
        self.offline: dict[str, dict[str, Any]] = {}

    # ---- data ------------------------------------------------------------------------------
    def make(self, seed: int, held: dict[str, tuple[str, ...]]) -> DataSet:
        args = self.args
        label = f"seed={seed};{held_out_label(held)}"
        root = self.workdir / f"set-{seed}-{held_out_label(held).replace(',', '_').replace('=', '-')}"
        make_synthetic_dataset(root / "data", args.n_train, args.n_valid, args.n_test, seed=seed,
                               image_size=args.image_size, held_out=held)
        report = build_lmdb(root / "data", "train,valid,test", root / "lmdb", on_error="fail")
        if not report.ok:
            raise RuntimeError(report.summary())
        manifest = json.loads((root / "data" / "manifest.json").read_text(encoding="utf-8"))
        seen = {t["text_id"]: t["seen"] for t in manifest["texts"]["test"]}
        return DataSet(label, root, seen, read_ground_truth(root / "data" / "test_texts.jsonl"))

    # ---- runs ------------------------------------------------------------------------------
    def train(self, data: DataSet, name: str, schedule: str, *, seed: int | None = None,
              **online: Any) -> tuple[Path, dict[str, Any]]:
        args = self.args
        interval = dict(valid_epoch_interval=1, valid_step_interval=None) if schedule == "epoch" else \
            dict(valid_epoch_interval=None, valid_step_interval=int(schedule))
        config = TrainConfig(
            train_data=str(data.lmdb / "train"), val_data=str(data.lmdb / "valid"),
            logs=str(data.root / "runs"), name=name, job_id=f"{name}-{time.time_ns()}", **TINY,
            context_length=args.context_length, num_workers=0, valid_num_workers=0,
            batch_size=args.batch_size, valid_batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
            wd=0.01, warmup=10, seed=args.train_seed if seed is None else seed, no_progress=True, online_wait_s=1800, **interval,
            **online)
        config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        sink = Recorder()
        started = time.monotonic()
        trainer = build_trainer(config, CPU, sink)
        try:
            trainer.fit()
        finally:
            trainer.close()
        info = {"seconds": round(time.monotonic() - started, 1), "valid_mr": sink.valid_mr}
        if sink.passes:
            info["online"] = online_summary(sink.passes)
        return config.checkpoint_dir / "epoch_latest.pt", info

    def predict(self, data: DataSet, name: str, checkpoint: Path, **online: Any) -> dict[str, Any]:
        output = data.root / "predictions" / f"{name}.jsonl"
        config = PredictConfig(
            mode="single", resume=str(checkpoint), image_data=str(data.lmdb / "test"), text_data=str(data.texts),
            output=str(output), experiments=str(data.root / "adapted"), name=name, job_id=f"{name}-{time.time_ns()}", **TINY,
            context_length=self.args.context_length, no_progress=True, **online)
        sink = Recorder()
        started = time.monotonic()
        predict(config, sink.emit)
        figures = self.recall(data, output)
        figures["seconds"] = round(time.monotonic() - started, 1)
        if sink.passes:
            figures["online"] = online_summary(sink.passes)
        return figures

    def recall(self, data: DataSet, predictions: Path) -> dict[str, Any]:
        predicted = read_predictions(predictions, data.truth)
        out: dict[str, Any] = {}
        for label, wanted in (("seen", True), ("unseen", False)):
            group = {qid: ids for qid, ids in data.truth.items() if data.seen.get(qid) == wanted}
            out[f"{label}_mr"] = round(recall_metrics(group, predicted)["mr"], 2)
        return out

    def record(self, data: DataSet, kind: str, figures: dict[str, Any], **labels: Any) -> dict[str, Any]:
        row = {"data": data.label, "kind": kind, **labels, **figures}
        offline = self.offline.get(data.label)
        if offline is not None and kind != "offline":
            gap = offline["seen_mr"] - offline["unseen_mr"]
            row["closed"] = round((figures["unseen_mr"] - offline["unseen_mr"]) / gap, 3) if gap > 0 else None
            row["seen_lost"] = round(offline["seen_mr"] - figures["seen_mr"], 2)
        self.rows.append(row)
        print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
        if self.args.rows:
            with open(self.args.rows, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return row

    def run_offline(self, data: DataSet) -> None:
        checkpoint, info = self.train(data, "offline", "epoch")
        figures = {"train": info, **self.predict(data, "offline", checkpoint)}
        figures["gap"] = round(figures["seen_mr"] - figures["unseen_mr"], 2)
        self.offline[data.label] = figures
        self.record(data, "offline", figures)
        if self.args.noise_floor:
            # The same offline run with another training seed: how far apart two runs of one
            # recipe land on this set, against which one run's gain or loss is read.
            seed = self.args.train_seed + 1
            checkpoint, info = self.train(data, "offline-reseeded", "epoch", seed=seed)
            self.record(data, "offline_reseeded", {"train": info, **self.predict(data, "offline-reseeded", checkpoint)},
                        train_seed=seed)

    def run_online(self, data: DataSet, rate: float, configs: list[tuple[str, dict]], schedules: list[str],
                   cache_repeat: bool) -> None:
        crawled: dict[str, tuple[str, dict]] = {}  # cache label -> the configuration that crawled it
        for c, (config_name, options) in enumerate(configs):
            # Every schedule for the first configuration; the others on the first schedule.
            for s, schedule in enumerate(schedules if c == 0 else schedules[:1]):
                share = share_label(options, test_time=False)
                cache = data.root / f"cache-train-{rate:g}-{share}"
                live = share not in crawled
                crawled.setdefault(share, (config_name, options))
                name = f"online-{rate:g}-{config_name}-{schedule}"
                checkpoint, info = self.train(data, name, schedule, online="live" if live else "cache",
                                              online_cache_dir=str(cache), **options)
                figures = {"train": info, **self.predict(data, name, checkpoint)}
                if live:
                    figures["crawled_queries"] = len(ImageCache(cache, "valid").queries())
                self.record(data, "online", figures, mode="live" if live else "cache", config=config_name,
                            schedule=schedule, wrong_item_rate=rate, crawl_share=share)
        # Each live run again from its cache, every picture there from the start.
        for share, (config_name, options) in crawled.items() if cache_repeat else ():
            cache = data.root / f"cache-train-{rate:g}-{share}"
            name = f"online-{rate:g}-{config_name}-{schedules[0]}-repeat"
            checkpoint, info = self.train(data, name, schedules[0], online="cache", online_cache_dir=str(cache),
                                          **options)
            self.record(data, "online_cache_repeat", {"train": info, **self.predict(data, name, checkpoint)},
                        mode="cache", config=config_name, schedule=schedules[0], wrong_item_rate=rate)

    def run_tta(self, data: DataSet, rate: float, configs: list[tuple[str, dict]]) -> None:
        args = self.args
        checkpoint = data.root / "runs" / "offline" / "checkpoints" / "epoch_latest.pt"
        crawled: set[str] = set()
        for config_name, options in configs:
            share = share_label(options, test_time=True)
            cache = data.root / f"cache-test-{rate:g}-{share}"
            mode = "cache" if share in crawled else "live"
            crawled.add(share)
            name = f"tta-{rate:g}-{config_name}"
            replay = {"online_replay_data": str(data.lmdb / "train")} if args.tta_replay else {}
            figures = self.predict(data, name, checkpoint, online=mode, online_cache_dir=str(cache),
                                   online_max_epochs=args.tta_epochs, online_wait_s=1800, lr=args.tta_lr,
                                   **{**replay, **options})
            if mode == "live":
                figures["crawled_queries"] = len(ImageCache(cache, "test").queries())
            self.record(data, "tta", figures, mode=mode, config=config_name, wrong_item_rate=rate, crawl_share=share)


# ---- the summary --------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 3),
            "sd": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
            "worst": round(min(values), 3), "n": len(values)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["kind"] == "offline":
            continue
        key = "|".join(str(row.get(k)) for k in ("kind", "config", "schedule", "wrong_item_rate") if k in row)
        groups.setdefault(key, []).append(row)
    out = {}
    for key, members in groups.items():
        closed = [r["closed"] for r in members if r.get("closed") is not None]
        lost = [r["seen_lost"] for r in members]
        worst = min(members, key=lambda r: r.get("closed") if r.get("closed") is not None else 9)
        out[key] = {"closed": spread(closed) if closed else None, "seen_lost_mean": round(statistics.fmean(lost), 2),
                    "seen_lost_sd": round(statistics.stdev(lost), 2) if len(lost) > 1 else 0.0,
                    "seen_lost_max": round(max(lost), 2), "worst_data": worst["data"]}
    return out


def verdict(rows: list[dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace,
            configs: list[str], schedules: list[str], rates: list[float], tta_configs: list[str]) -> dict[str, Any]:
    """The targets, judged on the first configuration (the one a user gets by default)."""
    main_rate, config = rates[0], configs[0]
    online = summary.get(f"online|{config}|{schedules[0]}|{main_rate}")
    tta = summary.get(f"tta|{tta_configs[0]}|{main_rate}")
    result: dict[str, Any] = {}
    if online and online["closed"]:
        result["online_closed_mean"] = online["closed"]["mean"]
        result["online_closed_worst"] = online["closed"]["worst"]
        result["online_seen_lost_max"] = online["seen_lost_max"]
        result["meets_online"] = (online["closed"]["mean"] >= TARGETS["online_closed_mean"]
                                  and online["closed"]["worst"] >= TARGETS["online_closed_worst"]
                                  and online["seen_lost_max"] <= TARGETS["online_seen_lost_max"])
    if tta and tta["closed"]:
        result["tta_closed_mean"] = tta["closed"]["mean"]
        result["tta_closed_worst"] = tta["closed"]["worst"]
        result["tta_seen_lost_max"] = tta["seen_lost_max"]
        result["meets_tta"] = (tta["closed"]["mean"] >= TARGETS["tta_closed_mean"]
                               and tta["closed"]["worst"] >= TARGETS["tta_closed_worst"]
                               and tta["seen_lost_max"] <= TARGETS["tta_seen_lost_max"])
    if len(schedules) > 1:
        per_data: dict[str, dict[str, float]] = {}
        for row in rows:
            if row["kind"] == "online" and row["config"] == config and row["wrong_item_rate"] == main_rate:
                per_data.setdefault(row["data"], {})[row["schedule"]] = row["closed"]
        diffs = [max(v.values()) - min(v.values()) for v in per_data.values() if len(v) == len(schedules)]
        mean_by_schedule = {s: summary.get(f"online|{config}|{s}|{main_rate}", {}).get("closed", {}) or {}
                            for s in schedules}
        result["schedule_closed_mean"] = {s: v.get("mean") for s, v in mean_by_schedule.items()}
        if diffs:
            result["schedule_closed_diff_mean"] = round(statistics.fmean(diffs), 3)
            result["schedule_closed_diff_max"] = round(max(diffs), 3)
        # The first schedule's run is live, the others replay its cache: with --cache-repeat the
        # first schedule is replayed too, so these differ in the schedule alone.
        same_source: dict[str, dict[str, float]] = {}
        for row in rows:
            if row.get("config") != config or row.get("wrong_item_rate") != main_rate:
                continue
            if row["kind"] == "online_cache_repeat" or (row["kind"] == "online" and row.get("mode") == "cache"):
                same_source.setdefault(row["data"], {})[row["schedule"]] = row["closed"]
        cached = [max(v.values()) - min(v.values()) for v in same_source.values() if len(v) == len(schedules)]
        if cached:
            result["schedule_closed_diff_from_cache_mean"] = round(statistics.fmean(cached), 3)
            result["schedule_closed_diff_from_cache_max"] = round(max(cached), 3)
    for kind in ("online", "tta"):
        active = active_crawling(rows, kind, schedules[0], main_rate)
        if active:
            result[f"{kind}_active_crawling"] = active
    # Further rates ran on fewer data sets: their gain against the main rate's on those same sets.
    for kind, first in (("online", config), ("tta", tta_configs[0])):
        def closed_by_data(rate: float) -> dict[str, float]:
            return {r["data"]: r["closed"] for r in rows if r["kind"] == kind and r.get("config") == first
                    and r.get("wrong_item_rate") == rate and r.get("schedule", schedules[0]) == schedules[0]
                    and r.get("closed") is not None}
        main = closed_by_data(main_rate)
        for rate in rates[1:]:
            noisy = closed_by_data(rate)
            common = [d for d in noisy if d in main]
            base = statistics.fmean(main[d] for d in common) if common else 0.0
            if common and base > 0:
                result[f"{kind}_noisy_{rate:g}_share_of_gain"] = round(statistics.fmean(noisy[d] for d in common) / base, 3)
    return result


def active_crawling(rows: list[dict[str, Any]], kind: str, schedule: str, rate: float) -> dict[str, Any] | None:
    """The live run that crawled a share of the queries beside the live run that crawled them all
    (same kind, schedule and rate): its crawl requests as a share of that one's and the
    difference in gap closed (mean over the data sets both ran on)."""
    def live(match) -> dict[str, dict[str, Any]]:
        return {r["data"]: r for r in rows if r["kind"] == kind and r.get("wrong_item_rate") == rate
                and r.get("schedule", schedule) == schedule and r.get("mode") == "live" and match(r)}

    active = live(lambda r: r.get("crawl_share") != "all")
    everything = live(lambda r: r.get("crawl_share") == "all")
    both = [d for d in active if d in everything and active[d].get("closed") is not None
            and everything[d].get("closed") is not None]
    if not both:
        return None
    crawled = [active[d].get("crawled_queries") or 0 for d in both]
    crawled_all = [everything[d].get("crawled_queries") or 0 for d in both]
    return {"active": active[both[0]]["config"], "all": everything[both[0]]["config"], "data_sets": len(both),
            "requests_share": round(sum(crawled) / max(sum(crawled_all), 1), 3),
            "closed_mean": round(statistics.fmean(active[d]["closed"] for d in both), 3),
            "closed_mean_all": round(statistics.fmean(everything[d]["closed"] for d in both), 3),
            "closed_diff": round(statistics.fmean(active[d]["closed"] - everything[d]["closed"] for d in both), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="data set seeds")
    parser.add_argument("--held-out", default="colour=purple,category=shoe;colour=green,category=mug,pattern=striped;"
                                              "colour=orange,category=bag",
                        help="held-out sets, ';'-separated (attribute=value,...)")
    parser.add_argument("--wrong-item-rate", default="0.2",
                        help="the shop's share of wrong items, comma-separated (the first is the main grid)")
    parser.add_argument("--configs", default="default;all;prototype",
                        help="online option sets: presets (default, all = every query crawled, half = active "
                             "crawling of half the queries, prototype) or "
                             "NAME:option=value,...; "
                             "separate with ';'")
    parser.add_argument("--tta-configs", default="default;half;prototype", help="test-time option sets, as --configs")
    parser.add_argument("--schedules", default="epoch,100",
                        help="validation schedules: 'epoch' (every epoch) or N (every N steps), comma-separated")
    parser.add_argument("--valid-step-interval", type=int, default=None,
                        help="shorthand: add 'every N steps' to --schedules")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-valid", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--context-length", type=int, default=24, help="tokens per caption (they are short)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003, help="training learning rate (the demo's)")
    parser.add_argument("--train-seed", type=int, default=0, help="the training runs' seed (data order, init)")
    parser.add_argument("--tta-epochs", type=int, default=5, help="online_max_epochs of test-time online")
    parser.add_argument("--tta-lr", type=float, default=1e-3, help="learning rate of test-time online")
    parser.add_argument("--tta-replay", action=argparse.BooleanOptionalAction, default=True,
                        help="give test-time online the training split as online_replay_data")
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--no-online", action="store_true", help="test-time online only (with --tta-configs)")
    parser.add_argument("--noise-floor", action="store_true",
                        help="train each offline model again with the next training seed: the noise floor")
    parser.add_argument("--cache-repeat", action="store_true", help="replay the live run from its cache too")
    parser.add_argument("--rows", default=None, help="append every run's row to this JSON-lines file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        held_sets = parse_held_out(args.held_out)
        rates = [float(r) for r in args.wrong_item_rate.split(",") if r.strip()]
        configs = [parse_config(c.strip()) for c in args.configs.split(";") if c.strip()]
        tta_configs = [parse_config(c.strip()) for c in args.tta_configs.split(";") if c.strip()]
        schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
        if args.valid_step_interval and str(args.valid_step_interval) not in schedules:
            schedules.append(str(args.valid_step_interval))
        for s in schedules:
            if s != "epoch" and (not s.isdigit() or int(s) < 1):
                raise ValueError(f"schedule {s!r} is neither 'epoch' nor a number of steps")
    except ValueError as exc:
        parser.error(str(exc))
    if not seeds or not rates or not configs or not schedules or any(not 0 <= r <= 1 for r in rates):
        parser.error("give at least one seed, rate in [0, 1], configuration and schedule")
    if min(args.steps, args.batch_size, args.n_train, args.n_valid, args.n_test, args.tta_epochs) < 1:
        parser.error("sizes, steps and epochs must be positive")

    workdir = Path(tempfile.mkdtemp(prefix="bench-online-efficacy-"))
    grid = Grid(args, workdir)
    started, load_before = time.monotonic(), os.getloadavg()
    # Seed-major: the first rows cover every held-out set.
    datasets = [grid.make(seed, held) for seed in seeds for held in held_sets]
    leftovers: list[str] = []
    try:
        for data in datasets:
            grid.run_offline(data)
        for r, rate in enumerate(rates):
            shop_env = {"CNCLIP_SHOP_WRONG_ITEM_RATE": str(rate)}
            with online_stack(workdir / f"stack-{rate:g}", shop_env=shop_env) as stack:
                # Further rates: the first seed's data sets (one per held-out set).
                for data in datasets if r == 0 else datasets[:len(held_sets)]:
                    if not args.no_online:
                        grid.run_online(data, rate, configs if r == 0 else configs[:1],
                                        schedules if r == 0 else schedules[:1], args.cache_repeat and r == 0)
                    if not args.no_tta:
                        grid.run_tta(data, rate, tta_configs if r == 0 else tta_configs[:1])
            leftovers += [str(p) for p in stack.leftovers]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarise(grid.rows)
    offline_gaps = [v["gap"] for v in grid.offline.values()]
    result = {
        "benchmark": "online_efficacy",
        "grid": {"seeds": seeds, "held_out": [held_out_label(h) for h in held_sets], "wrong_item_rates": rates,
                 "configs": {name: options for name, options in configs},
                 "tta_configs": {name: options for name, options in tta_configs}, "schedules": schedules},
        "sizes": {"n_train": args.n_train, "n_valid": args.n_valid, "n_test": args.n_test,
                  "image_size": args.image_size, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                  "tta_epochs": args.tta_epochs, "tta_lr": args.tta_lr, "tta_replay": args.tta_replay},
        "offline_gap": spread(offline_gaps) if offline_gaps else None,
        "summary": summary,
        "targets": TARGETS,
        "verdict": verdict(grid.rows, summary, args, [c[0] for c in configs], schedules, rates,
                           [c[0] for c in tta_configs]),
        "repeat_equals_live": all(
            r["unseen_mr"] == l["unseen_mr"] and r["seen_mr"] == l["seen_mr"]
            for r in grid.rows if r["kind"] == "online_cache_repeat"
            for l in grid.rows if l["kind"] == "online" and l.get("mode") == "live" and l["data"] == r["data"]
            and l["wrong_item_rate"] == r["wrong_item_rate"] and l.get("config") == r.get("config"))
        if args.cache_repeat else None,
        "wall_s": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
        "load_average_1min": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "orphan_processes": leftovers,
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
