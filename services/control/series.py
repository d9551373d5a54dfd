"""Chart data of a job, folded from its event stream.

Each job's series are cached with the id of the last stream entry read, so a page refreshing
every few seconds reads only the new events."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis

from shared import redis_keys
from shared.jobs import parse_event_fields
from shared.messages import Ensemble, OnlineBatch, Phase, Result, TrainStep, Validation

MAX_POINTS = 400  # per series sent to a browser; longer runs are thinned evenly


class JobSeries:
    def __init__(self):
        self.last_id = "-"
        self.train: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self.online: list[dict[str, Any]] = []
        self.ensemble: dict[str, dict[str, Any]] = {}
        self.phases: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}
        self._online_totals: dict[str, float] = {}

    def add(self, event) -> None:
        payload, ts = event.payload(), event.ts
        if isinstance(payload, TrainStep):
            self.train.append({"ts": ts, "step": payload.step, **payload.figures()})
        elif isinstance(payload, Validation):
            self.validation.append({"ts": ts, "step": payload.step, "epoch": payload.epoch, **payload.headline()})
        elif isinstance(payload, OnlineBatch):
            for key, value in payload.counts().items():
                self._online_totals[key] = self._online_totals.get(key, 0.0) + value
            self.online.append({"ts": ts, "index": len(self.online) + 1,
                                **{k: round(v, 3) for k, v in self._online_totals.items()}})
        elif isinstance(payload, Ensemble):
            self.ensemble.setdefault(payload.member_key, {}).update(
                payload.model_dump(exclude_unset=True, exclude={"member"}))
        elif isinstance(payload, Phase):
            self.phases.append({"ts": ts, "name": payload.name or ""})
        elif isinstance(payload, Result):
            self.result.update(payload.model_dump(exclude_unset=True))

    def view(self) -> dict[str, Any]:
        return {"train": _thin(self.train), "validation": _thin(self.validation),
                "online": _thin(self.online), "ensemble": self.ensemble,
                "phases": self.phases[-50:], "result": self.result}


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
