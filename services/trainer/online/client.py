"""The trainer's side of the crawl contract (docs/architecture.md, "Crawl contract"), torch-free.

Requests go out as Celery task ``shared.tasks.CRAWL_TASK`` on ``CRAWL_QUEUE`` through a Celery
app that only knows the broker (no crawler code is imported); results come back on this
rank's reply stream, which is emptied as it is read so Redis holds only what is in flight.
"""
from __future__ import annotations

import hashlib
import time

import redis
from celery import Celery

from shared import redis_keys
from shared.messages import CrawlRequest, CrawlResult, LoginState
from shared.query import normalize_query
from shared.redis_keys import CRAWL_QUEUE
from shared.tasks import CRAWL_TASK

# A crawler refreshes its login state every ~10 s while it lives; older means it is gone.
LOGIN_FRESH_S = 60.0


def request_id_for(job_id: str, split: str, query: str, pass_index: int) -> str:
    """Deterministic id of one query's request in one pass: a duplicate delivery of the same
    request is recognised by the crawler, while a later pass gets a new id and asks again."""
    text = "\x1f".join([job_id, split, normalize_query(query), str(pass_index)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class CrawlClient:
    def __init__(self, redis_url: str, *, job_id: str, rank: int):
        if not job_id:
            raise ValueError("job_id must not be empty")
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        self.job_id = job_id
        self.rank = rank
        self.reply_stream = redis_keys.crawl_results(job_id, rank)
        self.redis = redis.Redis.from_url(redis_url)
        self.celery = Celery(f"cnclip-trainer-{job_id}-{rank}", broker=redis_url)
        self.celery.conf.update(task_serializer="json", accept_content=["json"],
                                task_routes={CRAWL_TASK: {"queue": CRAWL_QUEUE}},
                                broker_connection_retry_on_startup=True)
        # "0": results pushed before this client started (e.g. by a run that was restarted)
        # are read too; ids only grow, so nothing is read twice.
        self._last_id = "0"
        self._seen: set[str] = set()

    def make_request(self, query: str, *, split: str, pass_index: int, n_images: int,
                     ttl_s: float, batch_index: int = -1) -> CrawlRequest:
        return CrawlRequest(
            request_id=request_id_for(self.job_id, split, query, pass_index), job_id=self.job_id,
            split=split, query=query, n_images=n_images, deadline=time.time() + ttl_s,
            reply_stream=self.reply_stream, batch_index=batch_index,
        )

    def submit(self, request: CrawlRequest) -> CrawlRequest:
        if request.reply_stream != self.reply_stream:
            raise ValueError(f"request replies to {request.reply_stream}, not to this rank's "
                             f"stream {self.reply_stream}")
        self.celery.send_task(CRAWL_TASK, args=[request.model_dump()], queue=CRAWL_QUEUE)
        return request

    def collect(self, block_ms: int | None = None, count: int = 256) -> list[CrawlResult]:
        """New results on the reply stream (waiting up to ``block_ms`` for the first one;
        None or 0 does not wait). Entries read are deleted from the stream. A result whose
        request id was already collected is dropped."""
        block = block_ms if block_ms else None
        answer = self.redis.xread({self.reply_stream: self._last_id}, count=count, block=block)
        if not answer:
            return []
        entries = answer[0][1]
        self._last_id = entries[-1][0].decode()
        self.redis.xdel(self.reply_stream, *[entry_id for entry_id, _ in entries])
        results = []
        for _, fields in entries:
            result = CrawlResult.from_stream_fields(fields)
            if result.request_id in self._seen:
                continue
            self._seen.add(result.request_id)
            results.append(result)
        return results

    def logged_in_ranks(self, fresh_s: float = LOGIN_FRESH_S) -> list[int]:
        """Crawler ranks whose login state is ``logged_in`` and was refreshed within ``fresh_s``."""
        now = time.time()
        ranks = []
        for rank in self.known_ranks():
            data = self.redis.hgetall(redis_keys.crawler_login(rank))
            if not data:
                continue
            try:
                state = LoginState.from_hash(data)
            except ValueError:
                continue  # a half-written or foreign hash says nothing about a login
            if state.state == "logged_in" and now - state.updated_at < fresh_s:
                ranks.append(rank)
        return ranks

    def known_ranks(self) -> list[int]:
        return sorted(int(raw) for raw in self.redis.smembers(redis_keys.crawler_ranks()))

    def close(self, drop_stream: bool = True) -> None:
        """Releases the connections; with ``drop_stream`` also the reply stream (results that
        arrive afterwards are nobody's)."""
        try:
            if drop_stream:
                self.redis.delete(self.reply_stream)
        finally:
            self.celery.close()
            self.redis.close()
