"""One subscription to the crawler pool's login channel, shared by every ``/login`` page.

Each page used to subscribe on its own, holding a Redis connection for as long as it was open:
a few hundred open pages took the connections the API needs. Here one task listens on its own
connection, reads the changed rank's view once, and hands it to every open page. A page that
does not keep up (more than ``queue_views`` views waiting) is not cut: its queue is dropped and
it is sent a full snapshot instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis as redis_lib
import redis.asyncio as aioredis

from shared import redis_keys
from services.control.crawler_pool import live_login_views, login_state

log = logging.getLogger(__name__)
SNAPSHOT = "snapshot"  # what a page that fell behind receives instead of the views it missed


class LoginFeed:
    def __init__(self, redis_url: str, views: aioredis.Redis, queue_views: int = 64):
        # The subscription's own connection; the views are read with the API's client.
        self.client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=10, health_check_interval=30)
        self.views = views
        self.queue_views = queue_views
        self._pages: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None

    def join(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.queue_views)
        self._pages.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="login-feed")
        return queue

    def leave(self, queue: asyncio.Queue) -> None:
        self._pages.discard(queue)
        if not self._pages and self._task is not None:
            self._task.cancel()
            self._task = None

    def _offer(self, item: Any) -> None:
        for queue in list(self._pages):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(SNAPSHOT)

    async def _listen(self) -> None:
        while self._pages:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(redis_keys.crawler_login_channel())
                # Whatever changed while nobody listened: every page starts from a snapshot.
                self._offer(SNAPSHOT)
                while self._pages:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    try:
                        rank = int(message["data"])
                    except (TypeError, ValueError):
                        continue
                    current = await login_state(self.views, rank)
                    if current is not None:
                        self._offer((await live_login_views(self.views, [current]))[0])
            except asyncio.CancelledError:
                raise
            except (redis_lib.RedisError, OSError) as exc:
                log.warning("login channel: %s; subscribing again in 1 s", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.aclose()
