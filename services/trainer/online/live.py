"""The live image source: the crawler pool over Redis, crawling ahead of use. Every result is
also written to the cache, and queries the cache already holds are served from it.

Two parts: the ``CrawlLedger`` (ledger.py) decides what is wanted, in flight, arrived or
late; the pump, one background thread, does all Redis and cache work. It keeps up to
``window`` requests in flight (submitting more as results arrive), reads results, re-validates
their images, writes them to the cache and applies the leakage guard, so that ``take`` only
waits for what has not arrived yet and the learner's accelerator is not kept idle by the crawl.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services.trainer.online.client import CrawlClient
from services.trainer.online.leakage import LeakageGuard
from services.trainer.online.ledger import CrawlLedger, distinct, queries_of
from services.trainer.online.reads import Fetcher, by_spelling
from services.trainer.online.types import Fetched
from shared.image_cache import ImageCache
from shared.image_validation import keep_valid_jpegs
from shared.messages import CrawlResult
from shared.query import normalize_query

log = logging.getLogger(__name__)

# How long the pump waits on the reply stream per read; bounds how late a stop is seen.
_COLLECT_BLOCK_MS = 200
# Login polling interval while waiting for a crawler rank to be logged in.
_LOGIN_POLL_S = 1.0


class LiveSource(Fetcher):
    """Crawls ahead of use through the crawler pool; writes every result to the cache."""

    def __init__(self, *, cache_dir: Path, job_id: str, rank: int, n_images: int, window: int,
                 wait_s: float, redis_url: str, request_ttl_s: float,
                 guard: LeakageGuard | None, expiry_grace_s: float = 60.0,
                 max_held: int | None = None):
        super().__init__(cache_dir, n_images, guard, read_ahead=window)
        # Arrived results kept in memory before take() (max_held); more are re-read from the cache.
        self.ledger = CrawlLedger(window, max_held if max_held is not None else 4 * window, self)
        if wait_s < 0 or request_ttl_s <= 0:
            raise ValueError("wait_s must be >= 0 and request_ttl_s > 0")
        self.wait_s = wait_s
        self.request_ttl_s = request_ttl_s
        self.expiry_grace_s = expiry_grace_s
        self.client = CrawlClient(redis_url, job_id=job_id, rank=rank)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    @property
    def window(self) -> int:
        return self.ledger.window

    @property
    def max_held(self) -> int:
        return self.ledger.max_held

    @max_held.setter
    def max_held(self, value: int) -> None:
        self.ledger.max_held = value

    # ---- login ----------------------------------------------------------------------------
    def wait_for_login(self, timeout_s: float, on_waiting: Callable[[list[int]], None]) -> bool:
        if self.client.logged_in_ranks():
            return True
        on_waiting(self.client.known_ranks())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(min(_LOGIN_POLL_S, max(0.0, deadline - time.monotonic())))
            if self.client.logged_in_ranks():
                return True
        return False

    # ---- before any pass -------------------------------------------------------------------
    def prefetch(self, split: str, queries: Sequence[str]) -> None:
        """Crawls ``queries`` that the cache lacks into it, in the background, while the job
        does other work (training runs long before its first validation pass). A pass later
        serves them from the cache, or waits for the request already in flight."""
        cache = ImageCache(self.cache_dir, split)
        wanted = [q for q in distinct(queries_of(queries)) if q.text not in cache]
        with self._cond:
            self.ledger.ask_ahead(split, wanted)
            self._cond.notify_all()
        self._start_pump()

    # ---- a pass ---------------------------------------------------------------------------
    def start_pass(self, split: str, queries: Sequence[str], pass_index: int) -> None:
        planned = queries_of(queries)
        cache = self._begin(split, planned)
        # The cache is looked at once per pass, outside the lock; what the pump writes to it
        # meanwhile the ledger knows of itself.
        cached = {q.norm for q in distinct(planned) if q.text in cache}
        with self._cond:
            from_cache = self.ledger.open_pass(split, pass_index, planned, cached)
            self._cond.notify_all()
        self.plan_reads(from_cache)
        self._start_pump()

    def take(self, queries: Sequence[str]) -> dict[str, Fetched]:
        self._require_pass()
        asked = queries_of(queries)
        wanted = distinct(asked)
        started = time.monotonic()
        deadline = started + self.wait_s
        with self._cond:
            waiting = self.ledger.need(wanted)
            self._cond.notify_all()
            while not self.ledger.all_settled(waiting):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out = self.ledger.hand_out(wanted)
            hits = {q.norm for q in wanted if self.ledger.is_cache_hit(q.norm)}
            self.add("wait_ms", int((time.monotonic() - started) * 1000))
        # Cache hits and spilled results are read here, outside the lock.
        for query in wanted:
            if query.text in out:
                continue
            fetched = self.from_cache(query)
            if query.norm in hits:
                self.add("cache_hits")
            # None: arrived with nothing to cache (a failed crawl), or the entry vanished.
            out[query.text] = fetched or Fetched(query=query.text, reason="failed")
        out = by_spelling(asked, out)
        self.tally(out)
        return out

    def end_pass(self) -> dict:
        with self._cond:
            self.ledger.close_pass()
        return self._end()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._ahead.close()
        self.client.close()

    # ---- the pump -------------------------------------------------------------------------
    def _start_pump(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, name="crawl-ahead", daemon=True)
            self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self._fill_window()
                for result in self.client.collect(block_ms=_COLLECT_BLOCK_MS):
                    self._on_result(result)
                with self._cond:
                    if self.ledger.expire(time.monotonic()):
                        self._cond.notify_all()
            except Exception as exc:  # Redis away, a broken entry: keep going, say so
                self.errors += 1
                log.warning("crawl-ahead: %s", exc)
                self._stop.wait(1.0)

    def _fill_window(self) -> None:
        while True:
            with self._cond:
                request = self.ledger.next_request()
                if request is None:
                    return
                message = self.client.make_request(request.query.text, split=request.split,
                                                   pass_index=request.pass_index, n_images=self.n_images,
                                                   ttl_s=self.request_ttl_s)
                self.ledger.sent(message.request_id, request,
                                 time.monotonic() + self.request_ttl_s + self.expiry_grace_s)
            try:
                self.client.submit(message)
            except Exception:
                with self._cond:  # not sent: give the slot back, ask again later
                    self.ledger.unsent(message.request_id, request)
                raise

    def _on_result(self, result: CrawlResult) -> None:
        images, invalid = keep_valid_jpegs(result.images)
        if images:
            ImageCache(self.cache_dir, result.split).put(
                result.query, images, request_id=result.request_id, status=result.status,
                crawler_rank=result.rank, source="crawl")
        norm = normalize_query(result.query)
        with self._cond:
            if self.ledger.result(result.request_id, result.split, norm, result.status, bool(images),
                                  lambda: self.finish(result.query, images, from_cache=False, invalid=invalid),
                                  invalid):
                self._cond.notify_all()

