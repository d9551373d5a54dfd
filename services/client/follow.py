"""A job's events from the service's server-sent event stream, across dropped connections.

Each event's id is its Redis stream id; a broken stream (the service restarting, a proxy timing
out) is opened again with ``Last-Event-ID`` set to the last id received, so the service resumes
right after it: no event is shown twice and none is lost. Ids are also compared on arrival, so
an event the service would send again is dropped here too."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import httpx

from services.client.api import TERMINAL, UNAVAILABLE, UNREACHABLE, Api, ClientError, error_for


@dataclass
class Event:
    id: str
    type: str
    body: dict[str, Any]  # the JobEvent: type, ts, job_id, data

    @property
    def data(self) -> dict[str, Any]:
        return self.body.get("data") or {}


def stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms or 0), int(seq or 0)


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, str] | None]:
    """(id, event, data) per message; None for a comment (the service's keep-alive ping)."""
    ident = kind = ""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield ident, kind or "message", "\n".join(data)
            ident, kind, data = "", "", []
            continue
        if line.startswith(":"):
            yield None
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            ident = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


class Interrupted(Exception):
    """The stream broke off before the job ended."""


def events(api: Api, job_id: str, *, follow: bool = True, after: str | None = None,
           retry_s: float = 120.0, on_retry: Callable[[str], None] | None = None) -> Iterator[Event]:
    """Every event of the job after ``after``. With ``follow``, until the job ends, resuming
    after interruptions for up to ``retry_s`` seconds of the service being unreachable; without
    it, the events stored so far (the stream up to the service's first keep-alive ping)."""
    last = [after]  # the last id received, updated as events arrive
    down_since: float | None = None
    delay = 0.5
    while True:
        try:
            for event in _one_stream(api, job_id, last[0], follow):
                last[0] = event.id or last[0]
                down_since, delay = None, 0.5
                yield event
            if not follow:
                return
            job = api.json("GET", f"/jobs/{job_id}")
            if job.get("state") in TERMINAL:
                return
            raise Interrupted("the stream ended before the job")
        except (httpx.TransportError, Interrupted) as exc:
            reason = str(exc) or type(exc).__name__
        except ClientError as exc:
            if exc.code != UNREACHABLE:
                raise
            reason = exc.message
        now = time.monotonic()
        down_since = now if down_since is None else down_since
        if now - down_since > retry_s:
            raise ClientError(UNREACHABLE, f"lost the control service at {api.target.url} for "
                                           f"{retry_s:.0f} s while following job {job_id}: {reason}")
        if on_retry is not None:
            on_retry(reason)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _one_stream(api: Api, job_id: str, last: str | None, follow: bool) -> Iterator[Event]:
    headers = {"Last-Event-ID": last} if last else {}
    seen = stream_id(last) if last else None
    with api.stream(f"/jobs/{job_id}/events", headers) as response:
        if response.status_code >= 400:
            response.read()
            error = error_for(response)
            if response.status_code in UNAVAILABLE:
                raise Interrupted(error.message)
            raise error
        for message in parse_sse(response.iter_lines()):
            if message is None:
                if not follow:
                    return
                continue
            ident, kind, data = message
            if kind == "error":
                raise Interrupted(data)
            if ident:
                if seen is not None and stream_id(ident) <= seen:
                    continue  # already shown before the reconnect
                seen = stream_id(ident)
            try:
                body = json.loads(data)
            except ValueError:
                continue
            yield Event(id=ident, type=body.get("type", kind), body=body)
