"""Followers of job event streams share one Redis reader per followed job.

A follower (``GET /jobs/{id}/events``) used to hold a Redis connection blocked in XREAD for as
long as it listened: a few hundred browsers took the whole pool and the job API answered 503.
Here each followed job has one reader (a task blocked in XREAD on a connection pool of the
hub's own, never the API's) that hands every batch it reads to the job's followers. A
follower reads what it missed before joining (or while it lagged) with short XRANGE reads,
then takes the live batches, skipping what it already sent.

Bounds (the stated capacity): at most ``max_streams`` jobs followed at once (one connection
each) and ``max_followers`` followers in all; a new follower beyond either is refused (503,
Retry-After). Each follower queues at most ``queue_batches`` batches: one that falls behind
is not cut, nor does it hold the others back; it drops its queue and catches up from Redis.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator

import redis as redis_lib
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from sse_starlette.event import ServerSentEvent

from shared import redis_keys
from shared.jobs import TERMINAL, parse_event_fields

log = logging.getLogger(__name__)
CATCH_UP_COUNT = 500  # entries per XRANGE while a follower reads what it missed
CATCH_UP_CONNECTIONS = 8


class HubFull(RuntimeError):
    """No room for another follower (or another followed job) right now."""


def stream_id(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class _Follower:
    def __init__(self, queue_batches: int):
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_batches)
        self.lagged = False

    def offer(self, item: Any) -> None:
        if self.lagged:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too slow to keep up: it reads what it missed from Redis instead.
            self.lagged = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("lagged", None))


class _Feed:
    """One job's reader and the followers it feeds."""

    def __init__(self, hub: "FollowerHub", job_id: str, start: str):
        self.hub = hub
        self.job_id = job_id
        self.key = redis_keys.job_events(job_id)
        self.last = start
        self.followers: set[_Follower] = set()
        self.task: asyncio.Task | None = None

    def broadcast(self, item: Any) -> None:
        for follower in list(self.followers):
            follower.offer(item)

    async def run(self) -> None:
        client = self.hub.client
        try:
            while self.followers:
                batches = await client.xread({self.key: self.last}, count=CATCH_UP_COUNT,
                                             block=self.hub.block_ms)
                entries = [e for _, got in batches or [] for e in got]
                if entries:
                    self.last = _text(entries[-1][0])
                    # Parsed and written once here, not once per follower.
                    self.broadcast(("entries", [sse_event(i, f) for i, f in entries]))
                    continue
                # A quiet spell: the job may have ended without a state event we could see
                # (its stream trimmed, or the record deleted).
                raw = await client.hget(redis_keys.job(self.job_id), "state")
                if raw is None or _json_or_none(raw) in TERMINAL:
                    self.broadcast(("end", None))
                    return
        except asyncio.CancelledError:
            raise
        except (redis_lib.RedisError, OSError) as exc:
            self.broadcast(("error", str(exc)))
        finally:
            self.hub._feed_done(self)


class FollowerHub:
    def __init__(self, redis_url: str, *, max_streams: int, max_followers: int,
                 queue_batches: int, block_s: float):
        self.max_streams = max_streams
        self.max_followers = max_followers
        self.queue_batches = queue_batches
        self.block_ms = max(1, int(block_s * 1000))
        # Pools of their own, never the API's: one connection per followed job blocks in
        # XREAD; the followers' short catch-up reads share CATCH_UP_CONNECTIONS (a burst of
        # joining followers waits for one of those instead of opening one each).
        # As the API's client: after a Redis restart a command tries once more on a fresh
        # connection instead of ending every follower's stream.
        options = dict(socket_timeout=block_s + 30, socket_connect_timeout=10, health_check_interval=30,
                       retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                       retry_on_error=[redis_lib.ConnectionError])
        self.client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=max_streams, timeout=block_s + 30, **options))
        self.reads = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=CATCH_UP_CONNECTIONS, timeout=30, **options))
        self._feeds: dict[str, _Feed] = {}
        self.followers = 0

    def capacity(self) -> dict[str, int]:
        return {"followers": self.followers, "max_followers": self.max_followers,
                "streams": len(self._feeds), "max_streams": self.max_streams}

    def room_for(self, job_id: str) -> str | None:
        """Why another follower of ``job_id`` would be refused now (None: there is room)."""
        if self.followers >= self.max_followers:
            return f"{self.followers} followers already (the most is {self.max_followers})"
        if job_id not in self._feeds and len(self._feeds) >= self.max_streams:
            return f"{len(self._feeds)} jobs are followed already (the most is {self.max_streams})"
        return None

    async def follow(self, job_id: str, after: str) -> AsyncIterator[bytes | dict[str, str]]:
        """The job's events after ``after``, written as SSE, ending when the job ends (an
        ``error`` event first when Redis fails, or when the room was taken meanwhile)."""
        try:
            feed, follower = await self._join(job_id)
        except HubFull as exc:
            yield {"event": "error", "data": json.dumps({"detail": f"too many followers: {exc}"})}
            return
        except (redis_lib.RedisError, OSError) as exc:
            yield {"event": "error", "data": json.dumps({"detail": str(exc)})}
            return
        try:
            async for event in self._events(feed, follower, after):
                yield event
        finally:
            self._leave(feed, follower)

    async def _join(self, job_id: str) -> tuple[_Feed, _Follower]:
        refusal = self.room_for(job_id)
        if refusal:
            raise HubFull(refusal)
        feed = self._feeds.get(job_id)
        if feed is None:
            # The reader starts at the stream's newest entry: what came before, each follower
            # reads for itself; what comes after, the reader hands to all.
            newest = await self.reads.xrevrange(redis_keys.job_events(job_id), count=1)
            feed = self._feeds.get(job_id)  # another follower may have started it meanwhile
            if feed is None:
                feed = _Feed(self, job_id, _text(newest[0][0]) if newest else "0-0")
                self._feeds[job_id] = feed
        follower = _Follower(self.queue_batches)
        feed.followers.add(follower)
        self.followers += 1
        if feed.task is None:
            feed.task = asyncio.create_task(feed.run(), name=f"follow-{job_id}")
        return feed, follower

    def _leave(self, feed: _Feed, follower: _Follower) -> None:
        if follower in feed.followers:
            feed.followers.discard(follower)
            self.followers -= 1
        if not feed.followers and feed.task is not None and not feed.task.done():
            feed.task.cancel()

    def _feed_done(self, feed: _Feed) -> None:
        if self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]

    async def _events(self, feed: _Feed, follower: _Follower, after: str) -> AsyncIterator[bytes | dict[str, str]]:
        last = stream_id(after)
        ended = False

        def fresh(events) -> bytes:
            """The events after ``last``, written as one chunk (one send for a whole batch)."""
            nonlocal last, ended
            chunk = []
            for position, encoded, terminal in events:
                if position <= last:
                    continue
                last = position
                if encoded is None:  # an entry that is not an event
                    continue
                ended = ended or terminal
                chunk.append(encoded)
            return b"".join(chunk)

        async def catch_up():
            while True:
                got = await self.reads.xrange(feed.key, min=f"({last[0]}-{last[1]}", count=CATCH_UP_COUNT)
                chunk = fresh([sse_event(i, f) for i, f in got])
                if chunk:
                    yield chunk
                if len(got) < CATCH_UP_COUNT or ended:
                    return

        try:
            async for item in catch_up():
                yield item
        except (redis_lib.RedisError, OSError) as exc:
            yield {"event": "error", "data": json.dumps({"detail": str(exc)})}
            return
        while not ended:
            if feed.task is not None and feed.task.done() and follower.queue.empty():
                return  # the reader stopped (it said why, if it could) and nothing is left
            kind, payload = await follower.queue.get()
            if kind == "entries":
                chunk = fresh(payload)
                if chunk:
                    yield chunk
            elif kind == "lagged":
                follower.lagged = False
                try:
                    async for item in catch_up():
                        yield item
                except (redis_lib.RedisError, OSError) as exc:
                    yield {"event": "error", "data": json.dumps({"detail": str(exc)})}
                    return
            elif kind == "error":
                yield {"event": "error", "data": json.dumps({"detail": payload})}
                return
            else:  # "end": the job ended; send what is left of its stream first
                with contextlib.suppress(redis_lib.RedisError, OSError):
                    async for item in catch_up():
                        yield item
                return

    async def close(self) -> None:
        for feed in list(self._feeds.values()):
            if feed.task is not None:
                feed.task.cancel()
        await self.client.aclose(close_connection_pool=True)
        await self.reads.aclose(close_connection_pool=True)


def sse_event(entry_id: Any, fields: dict) -> tuple[tuple[int, int], bytes | None, bool]:
    """(stream position, the event written as SSE, or None when the entry is not an event,
    whether it ends the job). Written once by the reader, sent as is to every follower."""
    position = stream_id(entry_id)
    try:
        event = parse_event_fields(fields)
    except ValueError:
        return position, None, False
    terminal = event.type == "state" and event.data.get("state") in TERMINAL
    encoded = ServerSentEvent(data=event.model_dump_json(), event=event.type, id=_text(entry_id)).encode()
    return position, encoded, terminal


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_or_none(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None
