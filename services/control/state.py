"""What the routes share: Redis clients, the job store, the Celery client and caches."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import redis as redis_lib
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from celery import Celery
from fastapi import Depends, Request

from shared import redis_keys
from shared.jobs import JobStore
from shared.tasks import RUN_JOB_TASK, send_job
from services.control.crawler_pool import PagesRate
from services.control.followers import FollowerHub
from services.control.login_feed import LoginFeed
from services.control.metrics import Metrics
from services.control.series import SeriesCache
from services.control.settings import ControlSettings


API_REDIS_CONNECTIONS = 64  # the routes' own pool (event streams have theirs: followers.py)
HEALTH_TIMEOUT_S = 0.5  # /healthz answers within about this (a checker kills a service that hangs)


@dataclass
class ControlState:
    settings: ControlSettings
    token: str
    redis: aioredis.Redis
    sync_redis: redis_lib.Redis
    store: JobStore
    metrics: Metrics
    celery: Celery
    series: SeriesCache = field(default_factory=SeriesCache)
    rates: PagesRate = field(default_factory=PagesRate)
    health_redis: aioredis.Redis | None = None
    followers: FollowerHub | None = None
    login_feed: LoginFeed | None = None

    @classmethod
    def build(cls, settings: ControlSettings, token: str) -> "ControlState":
        # After a Redis restart the pooled connections are dead: a command that finds its
        # connection closed tries once more on a fresh one instead of answering 503.
        retry_once = {"retry_on_error": [redis_lib.ConnectionError]}
        sync_client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=10,
                                               health_check_interval=30,
                                               retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                                               **retry_once)
        celery = Celery("cnclip-control", broker=settings.redis_url)
        celery.conf.update(task_routes={RUN_JOB_TASK: {"queue": redis_keys.GPU_QUEUE}},
                           broker_connection_retry_on_startup=True, task_ignore_result=True,
                           broker_connection_max_retries=3)
        return cls(settings=settings, token=token,
                   # Event streams block in XREAD for up to sse_ping_s: reads may take that long.
                   # A blocking pool: a burst of requests waits for a connection (up to 10 s)
                   # instead of failing with "too many connections" (503).
                   redis=aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
                       settings.redis_url, max_connections=API_REDIS_CONNECTIONS, timeout=10,
                       health_check_interval=30, socket_timeout=settings.sse_ping_s + 30,
                       socket_connect_timeout=10, retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                       **retry_once)),
                   sync_redis=sync_client, store=JobStore(sync_client),
                   metrics=Metrics(sync_client), celery=celery,
                   # /healthz has a client of its own with short timeouts and no retry: a
                   # Redis that does not answer is reported within a second, never waited for.
                   health_redis=aioredis.Redis.from_url(settings.redis_url, socket_timeout=HEALTH_TIMEOUT_S,
                                                        socket_connect_timeout=HEALTH_TIMEOUT_S,
                                                        max_connections=8),
                   followers=FollowerHub(settings.redis_url, max_streams=settings.sse_max_streams,
                                         max_followers=settings.sse_max_followers,
                                         queue_batches=settings.sse_queue_batches, block_s=settings.sse_ping_s))

    def __post_init__(self) -> None:
        if self.login_feed is None:
            self.login_feed = LoginFeed(self.settings.redis_url, self.redis)

    def ensure_indexes(self) -> None:
        """Jobs recorded before the kind/state indexes existed are indexed once (the first
        list after start; not at start, which must not need Redis)."""
        self.store.ensure_indexes()

    def send_job(self, job_id: str, nnodes: int) -> None:
        send_job(self.celery, job_id, nnodes)

    async def close(self) -> None:
        if self.followers is not None:
            await self.followers.close()
        if self.login_feed is not None:
            await self.login_feed.close()
        if self.health_redis is not None:
            await self.health_redis.aclose()
        await self.redis.aclose(close_connection_pool=True)
        self.sync_redis.close()


def get_state(request: Request) -> ControlState:
    return request.app.state.control


# What every route that needs the service's clients declares: ``state: StateDep``.
StateDep = Annotated[ControlState, Depends(get_state)]
