"""What a job's panels show, folded from its event stream: training curves, online learning per
batch and per pass, prediction phases with their durations, ensemble members next to the fused
result.

Each job's series are cached with the id of the last stream entry read, so a page refreshing
every few seconds reads only the new events."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis

from shared import redis_keys
from shared.jobs import TERMINAL, parse_event_fields
from services.control.job_view import run_name

MAX_POINTS = 400  # per series sent to a browser; longer runs are thinned evenly
METRIC_KEYS = ("r1", "r5", "r10", "mr")
_TRAIN_KEYS = ("loss", "lr", "samples_per_s")
_VALID_KEYS = (*METRIC_KEYS, "loss")
_ONLINE_BATCH_KEYS = ("batch", "queries", "pairs", "wait_ms", "loss")
_ONLINE_PASS_KEYS = ("epoch", "pass_index", "queries", "pairs", "steps", "dropped_disagreeing", "replay_pairs",
                     "skipped_active", "wall_s")
WAITING_FOR_LOGIN = "waiting_for_login"
# What an ensemble member's progress word means to a person (the trainer's words are terse,
# and "i/n" counts members, not the member's own progress).
_MEMBER_STATUS = {"encoding": "scoring", "scored": "scored", "reused": "reused saved scores"}


def _numbers(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: data[k] for k in keys if isinstance(data.get(k), (int, float)) and not isinstance(data[k], bool)}


def _missing(value: Any) -> tuple[float, dict[str, float]]:
    """``missing`` is a {reason: count} map; a bare number is a total without reasons."""
    if isinstance(value, dict):
        reasons = {str(k): v for k, v in value.items() if isinstance(v, (int, float))}
        return sum(reasons.values()), reasons
    if isinstance(value, (int, float)):
        return value, {}
    return 0, {}


def _metrics(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict):
        return None
    found = _numbers(value, METRIC_KEYS)
    return found or None


class EnsembleView:
    """Members (run, weight, status, metrics alone), the fused result, and the fitted weights
    against equal ones."""

    def __init__(self):
        self.members: dict[str, dict[str, Any]] = {}
        self.fused: dict[str, Any] | None = None
        self.fit: dict[str, Any] | None = None
        self.fit_evaluations = 0

    def add(self, data: dict[str, Any], phase: str) -> None:
        member = data.get("member")
        progress = data.get("progress")
        if member is None:
            if progress == "fitted":
                self.fit = {"weights": data.get("weights"), "metrics": _metrics(data.get("metrics")),
                            "equal_weights": data.get("equal_weights"),
                            "equal_metrics": _metrics(data.get("equal_metrics"))}
            elif isinstance(progress, str) and progress.startswith("fit evaluation"):
                self.fit_evaluations += 1
            elif progress == "done":
                self.fused = {"weights": data.get("weights"), "metrics": _metrics(data.get("metrics"))}
            return
        entry = self.members.setdefault(str(member), {"member": member})
        for key in ("checkpoint", "scores", "weight"):
            if data.get(key) is not None:
                entry[key] = data[key]
        entry["run"] = run_name(entry.get("checkpoint") or entry.get("scores"))
        if isinstance(progress, str) and "/" in progress:
            entry["status"] = "done"  # "i/n": the member's figures on the test set are in
        elif isinstance(progress, str):
            status = _MEMBER_STATUS.get(progress, progress)
            entry["status"] = status + (" (validation set)" if phase == "ensemble:fit-weights" else "")
        if _metrics(data.get("metrics")):
            entry["metrics"] = _metrics(data["metrics"])

    def view(self) -> dict[str, Any] | None:
        if not self.members and self.fused is None and self.fit is None:
            return None
        members = sorted(self.members.values(), key=lambda m: str(m["member"]).zfill(6))
        scored = [m for m in members if m.get("metrics") and "mr" in m["metrics"]]
        best = max(scored, key=lambda m: m["metrics"]["mr"], default=None)
        fused_mr = ((self.fused or {}).get("metrics") or {}).get("mr")
        comparison = None
        if best is not None and fused_mr is not None:
            comparison = {"best_member": best["member"], "best_run": best.get("run", ""),
                          "best_mr": best["metrics"]["mr"], "fused_mr": fused_mr,
                          "gain_mr": round(fused_mr - best["metrics"]["mr"], 4)}
        return {"members": members, "fused": self.fused, "fit": self.fit,
                "fit_evaluations": self.fit_evaluations, "versus_best": comparison}


class JobSeries:
    def __init__(self):
        self.last_id = "-"
        self.train: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self.online: list[dict[str, Any]] = []
        self.online_missing: dict[str, float] = {}
        self.online_passes: list[dict[str, Any]] = []
        self.ensemble = EnsembleView()
        self.phases: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}
        self.ended_at: float | None = None
        self.waiting_for_login = False

    def add(self, event) -> None:
        data, ts, kind = event.data, event.ts, event.type
        if kind == "train_step":
            self.train.append({"ts": ts, "step": data.get("step"), **_numbers(data, _TRAIN_KEYS)})
        elif kind == "validation":
            self.validation.append({"ts": ts, "step": data.get("step"), "epoch": data.get("epoch"),
                                    **_numbers(data, _VALID_KEYS)})
        elif kind == "online":
            missing, reasons = _missing(data.get("missing"))
            for reason, count in reasons.items():
                self.online_missing[reason] = self.online_missing.get(reason, 0) + count
            self.online.append({"ts": ts, "index": len(self.online) + 1, "split": data.get("split"),
                                **_numbers(data, _ONLINE_BATCH_KEYS), "missing": missing})
        elif kind == "online_pass":
            missing, reasons = _missing(data.get("missing"))
            self.online_passes.append({"ts": ts, "split": data.get("split"), **_numbers(data, _ONLINE_PASS_KEYS),
                                       "missing": missing, "missing_by_reason": reasons,
                                       "metrics": _metrics(data.get("metrics"))})
        elif kind == "ensemble":
            self.ensemble.add(data, self.phases[-1]["name"] if self.phases else "")
        elif kind == "phase":
            self._end_phase(ts)
            name = str(data.get("name", ""))
            self.phases.append({"name": name, "ts": ts, "duration_s": None})
        elif kind == "result":
            self.result.update(data)
            self._end_phase(ts)
        elif kind == "state" and data.get("state") in TERMINAL:
            self.ended_at = ts
            self._end_phase(ts)
        elif kind == WAITING_FOR_LOGIN:
            self.waiting_for_login = True
            return
        if kind in ("train_step", "online", "online_pass", "result", "state", "phase"):
            # Waiting ends as soon as the job does anything else (or is itself a phase so named).
            self.waiting_for_login = kind == "phase" and data.get("name") == WAITING_FOR_LOGIN

    def _end_phase(self, ts: float) -> None:
        if self.phases and self.phases[-1]["duration_s"] is None:
            self.phases[-1]["duration_s"] = round(max(0.0, ts - self.phases[-1]["ts"]), 3)

    def view(self) -> dict[str, Any]:
        return {"train": _thin(self.train), "validation": _thin(self.validation),
                "online": _thin(self.online), "online_missing": self.online_missing,
                "online_passes": self.online_passes[-200:], "ensemble": self.ensemble.view(),
                "phases": self.phases[-50:], "result": self.result, "ended_at": self.ended_at,
                "waiting_for_login": self.waiting_for_login}


def _thin(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = len(points) / MAX_POINTS
    thinned = [points[int(i * stride)] for i in range(MAX_POINTS - 1)]
    thinned.append(points[-1])
    return thinned


class SeriesCache:
    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._jobs: OrderedDict[str, JobSeries] = OrderedDict()

    async def get(self, client: aioredis.Redis, job_id: str) -> dict[str, Any]:
        series = self._jobs.pop(job_id, None) or JobSeries()
        self._jobs[job_id] = series
        while len(self._jobs) > self.capacity:
            self._jobs.popitem(last=False)
        start = series.last_id if series.last_id == "-" else f"({series.last_id}"
        while True:
            entries = await client.xrange(redis_keys.job_events(job_id), min=start, count=5000)
            for entry_id, fields in entries:
                try:
                    series.add(parse_event_fields(fields))
                except ValueError:
                    pass
                series.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if len(entries) < 5000:
                break
            start = f"({series.last_id}"
        return series.view()
