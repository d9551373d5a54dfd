"""/status: jobs, their progress and charts, the crawler pool."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from shared import redis_keys
from shared.jobs import JOB_KINDS, STATES
from services.control.crawler_pool import crawler_pool
from services.control.job_view import job_run, view_kind
from services.control.routes.jobs import JOB_ID_PATTERN
from services.control.schemas import StatusAnswer, StatusJob
from services.control.security import COMMON_RESPONSES, bearer
from services.control.state import ControlState, StateDep

router = APIRouter(tags=["status"], dependencies=[Depends(bearer)], responses=COMMON_RESPONSES)
_SUMMARY_FIELDS = ("id", "kind", "state", "reason", "created_at", "updated_at", "started_at",
                   "finished_at", "attempts", "progress", "result", "spec", "heartbeat_at")
_SPEC_FIELDS = ("name", "mode", "online", "nnodes", "nproc_per_node", "members", "weights",
                "max_steps", "max_epochs", "online_max_epochs", "resume", "score_dir")


# A job's summary stays small whatever its record holds (a spec naming a thousand members, a
# long failure reason): the status page is polled every second by every open browser.
SUMMARY_MAX_ITEMS = 16
SUMMARY_MAX_CHARS = 500
SUMMARY_MAX_DEPTH = 4


def _small(value: Any, depth: int = 0) -> Any:
    """``value`` with long strings cut, long lists cut (a ``"+N more"`` marker at the end) and
    deep nesting dropped, so one record cannot make the status answer large."""
    if isinstance(value, str):
        return value if len(value) <= SUMMARY_MAX_CHARS else value[:SUMMARY_MAX_CHARS] + "..."
    if depth >= SUMMARY_MAX_DEPTH and isinstance(value, (list, dict)):
        return "..."
    if isinstance(value, list):
        items = [_small(v, depth + 1) for v in value[:SUMMARY_MAX_ITEMS]]
        if len(value) > SUMMARY_MAX_ITEMS:
            items.append(f"+{len(value) - SUMMARY_MAX_ITEMS} more")
        return items
    if isinstance(value, dict):
        keys = list(value)[:SUMMARY_MAX_ITEMS * 4]
        return {str(k)[:SUMMARY_MAX_CHARS]: _small(value[k], depth + 1) for k in keys}
    return value


def _summary(job_id: str, values: Any) -> dict[str, Any] | None:
    """The job's summary; one whose record cannot be read shows as ``unreadable`` with why,
    and the other jobs are shown as usual."""
    if isinstance(values, Exception):  # the key holds something else than a hash
        return _unreadable(job_id, str(values))
    if values[0] is None:  # the record is gone
        return None
    try:
        summary = _readable_summary(values)
        StatusJob.model_validate(summary)  # what /docs promises of a job holds (else: unreadable)
        return summary
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return _unreadable(job_id, f"{type(exc).__name__}: {exc}")


def _unreadable(job_id: str, reason: str) -> dict[str, Any]:
    # The fields the page reads of every job, so the row renders (with its reason) like the rest.
    return {"id": job_id, "state": "unreadable", "reason": reason[:SUMMARY_MAX_CHARS], "kind": "unreadable",
            "spec": {"mode": "-"}, "progress": {}, "view": {"kind": "unreadable", "run": job_id}}


def _readable_summary(values: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in zip(_SUMMARY_FIELDS, values):
        if raw is not None:
            out[key] = json.loads(raw)
    spec = out.pop("spec", {}) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"spec: {type(spec).__name__} is not a job's spec")
    if out.get("state", "queued") not in STATES or out.get("kind", "train") not in JOB_KINDS:
        raise ValueError(f"state {out.get('state')!r} or kind {out.get('kind')!r} is not a job's")
    out["spec"] = {k: spec[k] for k in _SPEC_FIELDS if k in spec}
    kind = out.get("kind", "train")
    out["view"] = {"kind": view_kind(kind, spec), "run": job_run(out["id"], kind, spec)}
    return _small(out)


async def _build_status(state: ControlState, n: int) -> bytes:
    ids = [i.decode() for i in await state.redis.zrevrange(redis_keys.jobs_index(), 0, n - 1)]
    async with state.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(redis_keys.job(job_id), _SUMMARY_FIELDS)
        pipe.zcard(redis_keys.jobs_index())
        results = await pipe.execute(raise_on_error=False)
    jobs = [j for j in (_summary(i, r) for i, r in zip(ids, results[:-1])) if j is not None]
    counts = {s: 0 for s in STATES}
    for job in jobs:
        counts[job.get("state", "queued")] = counts.get(job.get("state", "queued"), 0) + 1
    body = {"now": time.time(), "total_jobs": int(results[-1]), "shown_counts": counts,
            "jobs": jobs, "crawler": await crawler_pool(state.redis, state.rates)}
    return json.dumps(body, separators=(",", ":")).encode()


class StatusCache:
    """Answers that are at most ``ttl`` seconds old, built by one request at a time: a status
    page polled by many browsers costs Redis a few reads per second, not one per request."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._entries: dict[int, tuple[float, bytes]] = {}
        self._lock = asyncio.Lock()

    async def get(self, state: ControlState, n: int) -> bytes:
        entry = self._entries.get(n)
        if entry and time.monotonic() - entry[0] < self.ttl:
            return entry[1]
        async with self._lock:
            entry = self._entries.get(n)
            if entry and time.monotonic() - entry[0] < self.ttl:
                return entry[1]
            body = await _build_status(state, n)
            self._entries[n] = (time.monotonic(), body)
            if len(self._entries) > 32:
                self._entries.pop(next(iter(self._entries)))
            return body


@router.get("/api/status", summary="Jobs with their latest figures and the crawler pool",
            response_model=StatusAnswer)
async def status_data(request: Request, state: StateDep,
                      limit: Annotated[int | None, Query(ge=1, le=1000)] = None) -> Response:
    """The newest jobs (each with its latest figures: phase, step, loss, validation, online
    counters, ETA) and the crawler pool (ranks, login state, pages per minute, queue depth)."""
    cache: StatusCache = request.app.state.status_cache
    body = await cache.get(state, limit or state.settings.status_jobs)
    return Response(body, media_type="application/json")


@router.get("/status", response_class=HTMLResponse, include_in_schema=False)
async def status_page(request: Request,
                      job: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None):
    return request.app.state.templates.TemplateResponse(
        request, "status.html", {"title": "Status", "selected_job": job or ""})
