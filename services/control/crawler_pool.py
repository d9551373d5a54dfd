"""Reads what the crawler pool publishes: each rank's login state and QR code, its counters,
and the depth of the crawl queue in the Celery broker."""
from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

import redis as redis_lib
import redis.asyncio as aioredis
from pydantic import ValidationError

from shared import redis_keys
from shared.messages import LoginState

# kombu's Redis transport keeps a queue in a list named after it, plus one list per priority
# step other than the default ("<queue>\x06\x16<priority>").
_PRIORITY_STEPS = (3, 6, 9)


def queue_lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}\x06\x16{p}" for p in _PRIORITY_STEPS]


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ranks(raw: set) -> list[int]:
    ranks = []
    for value in raw:
        try:
            ranks.append(int(_decode(value)))
        except ValueError:
            continue
    return sorted(ranks)


def _login_state(rank: int, data: dict) -> LoginState | None:
    if not data:
        return None
    try:
        return LoginState.from_hash(data)
    except (ValidationError, ValueError):
        return LoginState(rank=rank, state="error", detail="unreadable login state")


def login_states_sync(client: redis_lib.Redis) -> list[LoginState]:
    ranks = _ranks(client.smembers(redis_keys.crawler_ranks()))
    pipe = client.pipeline(transaction=False)
    for rank in ranks:
        pipe.hgetall(redis_keys.crawler_login(rank))
    states = [_login_state(r, d) for r, d in zip(ranks, pipe.execute())]
    return [s for s in states if s is not None]


def crawl_queue_depth_sync(client: redis_lib.Redis) -> int:
    pipe = client.pipeline(transaction=False)
    for name in queue_lists(redis_keys.CRAWL_QUEUE):
        pipe.llen(name)
    return int(sum(pipe.execute()))


async def login_states(client: aioredis.Redis) -> list[LoginState]:
    ranks = _ranks(await client.smembers(redis_keys.crawler_ranks()))
    async with client.pipeline(transaction=False) as pipe:
        for rank in ranks:
            pipe.hgetall(redis_keys.crawler_login(rank))
        results = await pipe.execute()
    states = [_login_state(r, d) for r, d in zip(ranks, results)]
    return [s for s in states if s is not None]


async def login_state(client: aioredis.Redis, rank: int) -> LoginState | None:
    return _login_state(rank, await client.hgetall(redis_keys.crawler_login(rank)))


def login_view(state: LoginState, has_qr: bool) -> dict[str, Any]:
    view = state.model_dump()
    view["has_qr"] = has_qr
    view["qr_url"] = f"/login/{state.rank}/qr.png?v={state.qr_updated_at or 0}" if has_qr else None
    # Seconds left, by this server's clock: the page counts down from when it receives them,
    # so a browser whose clock is off still shows the right time.
    view["qr_expires_in_s"] = (round(max(0.0, state.qr_expires_at - time.time()), 1)
                               if has_qr and state.qr_expires_at else None)
    return view


# A rank lives while its worker keeps its claim (a key with a TTL it refreshes: the rank's
# heartbeat). A dead rank's QR code goes with its claim: removed here, in one step that checks
# the claim is still gone, so a worker that has just taken the rank keeps the code it shows.
OFFLINE = "offline"
OFFLINE_DETAIL = "no crawler holds this rank (its worker stopped sending heartbeats)"
_DROP_DEAD_QR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('DEL', KEYS[2]) end
return 0
"""


async def ranks_alive(client: aioredis.Redis, ranks: list[int]) -> dict[int, bool]:
    async with client.pipeline(transaction=False) as pipe:
        for rank in ranks:
            pipe.exists(redis_keys.crawler_rank_claim(rank))
        alive = await pipe.execute()
    return {rank: bool(a) for rank, a in zip(ranks, alive)}


async def drop_dead_qr(client: aioredis.Redis, rank: int) -> None:
    await client.eval(_DROP_DEAD_QR, 2, redis_keys.crawler_rank_claim(rank), redis_keys.crawler_qr(rank))


def offline(state: LoginState) -> LoginState:
    """How a rank whose worker is gone is shown: offline, with no code to scan."""
    return state.model_copy(update={"state": OFFLINE, "detail": OFFLINE_DETAIL,
                                    "qr_updated_at": None, "qr_expires_at": None})


async def live_login_views(client: aioredis.Redis, states: list[LoginState]) -> list[dict[str, Any]]:
    """The views of ``states``; a rank with no live worker shows offline and its code is dropped."""
    alive = await ranks_alive(client, [s.rank for s in states])
    async with client.pipeline(transaction=False) as pipe:
        for state in states:
            pipe.exists(redis_keys.crawler_qr(state.rank))
        has = await pipe.execute()
    views = []
    for state, has_qr in zip(states, has):
        if alive[state.rank]:
            views.append(login_view(state, bool(has_qr)))
            continue
        if has_qr:
            await drop_dead_qr(client, state.rank)
        views.append(login_view(offline(state), False))
    return views


async def login_views(client: aioredis.Redis) -> list[dict[str, Any]]:
    return await live_login_views(client, await login_states(client))


class PagesRate:
    """Pages per minute of each rank, from the growth of its ``pages`` counter between reads
    over the last few minutes (the crawler only keeps totals)."""

    WINDOW_S = 300.0

    def __init__(self):
        self._samples: dict[int, deque[tuple[float, float]]] = {}

    def observe(self, rank: int, pages: float, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        samples = self._samples.setdefault(rank, deque())
        if samples and pages < samples[-1][1]:
            samples.clear()  # the counter restarted
        samples.append((now, pages))
        while len(samples) > 2 and now - samples[0][0] > self.WINDOW_S:
            samples.popleft()
        t0, p0 = samples[0]
        if now - t0 < 1.0:
            return None
        return round((pages - p0) / (now - t0) * 60.0, 2)


def _number(value: Any) -> float:
    try:
        return float(_decode(value))
    except (TypeError, ValueError):
        return 0.0


_COUNTERS = ("pages", "queries", "images", "failures", "last_seen", "pages_per_min")
FAILURES_SCANNED = 500  # newest failure records read to find each rank's last reason


async def last_failures(client: aioredis.Redis, count: int = FAILURES_SCANNED) -> dict[int, dict[str, Any]]:
    """Each rank's newest failure (reason, query, time) among the newest ``count`` records of
    the failure stream: the reason a person needs to see is the current one."""
    newest: dict[int, dict[str, Any]] = {}
    for _, fields in await client.xrevrange(redis_keys.crawl_failures(), count=count):
        try:
            meta = json.loads(fields.get(b"meta", fields.get("meta", b"{}")))
            rank = int(meta["rank"])
        except (ValueError, KeyError, TypeError):
            continue
        if rank not in newest:
            newest[rank] = {"reason": str(meta.get("reason", "")), "query": meta.get("query"),
                            "ts": meta.get("ts")}
    return newest


async def crawler_pool(client: aioredis.Redis, rates: PagesRate) -> dict[str, Any]:
    states = await login_states(client)
    alive = await ranks_alive(client, [s.rank for s in states])
    states = [s if alive[s.rank] else offline(s) for s in states]
    async with client.pipeline(transaction=False) as pipe:
        for state in states:
            pipe.hgetall(redis_keys.crawler_stats(state.rank))
        for name in queue_lists(redis_keys.CRAWL_QUEUE):
            pipe.llen(name)
        results = await pipe.execute()
    stats, depths = results[:len(states)], results[len(states):]
    failures = await last_failures(client)
    ranks = []
    for state, raw in zip(states, stats):
        fields = {_decode(k): v for k, v in (raw or {}).items()}
        counters = {k: _number(fields[k]) for k in _COUNTERS if k in fields}
        ppm = rates.observe(state.rank, counters.get("pages", 0.0))
        if "pages_per_min" in counters:
            ppm = counters.pop("pages_per_min")
        current = fields.get("current_query")
        ranks.append({"rank": state.rank, "state": state.state, "since": state.since,
                      "updated_at": state.updated_at, "detail": state.detail, "host": state.host,
                      "site": state.site, "pages_per_min": ppm, **counters,
                      "current_query": _decode(current) if current is not None else None,
                      "last_failure": failures.get(state.rank),
                      "login_url": f"/login#rank-{state.rank}"})
    return {"ranks": ranks, "queue_depth": int(sum(depths)),
            "logged_in": sum(1 for r in ranks if r["state"] == "logged_in")}
