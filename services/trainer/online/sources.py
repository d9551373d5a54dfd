"""Image sources: where the learner's crawled images come from. Torch-free.

``make_source`` is the only place that looks at the mode:

- ``cache``: the crawled-image cache only (no Redis, no crawler, no login);
- ``live``: the crawler pool over Redis, crawling ahead of use; every result is also written
  to the cache, and queries the cache already holds are served from it.

A live source runs one background thread that does all Redis work: it keeps up to ``window``
requests in flight (submitting more as results arrive), reads results, re-validates their
images, writes them to the cache and applies the leakage guard, so that ``take`` only waits
for what has not arrived yet and the learner's accelerator is not kept idle by the crawl.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from services.trainer.online.client import CrawlClient
from services.trainer.online.leakage import LeakageGuard
from services.trainer.online.types import Fetched
from shared.image_cache import ImageCache
from shared.image_validation import keep_valid_jpegs
from shared.messages import CrawlResult
from shared.query import normalize_query

log = logging.getLogger(__name__)

# How long the live source waits on the reply stream per read; bounds how late a stop is seen.
_COLLECT_BLOCK_MS = 200
# The pass index of requests made by ``prefetch`` (before any pass; real passes count from 0).
PREFETCH_PASS = -1
# Login polling interval while waiting for a crawler rank to be logged in.
_LOGIN_POLL_S = 1.0


class ImageSource(Protocol):
    def wait_for_login(self, timeout_s: float, on_waiting: Callable[[list[int]], None]) -> bool: ...
    def prefetch(self, split: str, queries: Sequence[str]) -> None: ...
    def start_pass(self, split: str, queries: Sequence[str], pass_index: int) -> None: ...
    def take(self, queries: Sequence[str]) -> dict[str, Fetched]: ...
    def end_pass(self) -> dict: ...
    def close(self) -> None: ...


def _counters() -> dict[str, int]:
    # Every counter an end_pass report carries, in one place.
    return dict.fromkeys(
        ("queries", "distinct", "submitted", "cache_hits", "arrived", "arrived_late", "late",
         "failed", "not_cached", "leaked", "dropped_leaked", "invalid_images", "expired",
         "max_in_flight", "wait_ms", "from_prefetch"), 0)


def _distinct(queries: Sequence[str]) -> list[str]:
    """The queries in order of first use, one per normalised text."""
    seen: set[str] = set()
    out = []
    for query in queries:
        norm = normalize_query(query)
        if norm not in seen:
            seen.add(norm)
            out.append(query)
    return out


class _ReadAhead:
    """Reads cache entries in worker threads, up to ``depth`` queries ahead of their use, so
    that decoding, validation and hashing for the guard overlap the learner's step. Queries are
    expected in the planned order; one asked for out of order is simply read on the spot."""

    def __init__(self, depth: int, workers: int = 4):
        if depth < 0:
            raise ValueError(f"read-ahead depth must be >= 0, got {depth}")
        self.depth = depth  # 0: every entry is read when take() asks for it
        # Decoding and hashing release the GIL for most of their time: threads run in parallel.
        self.workers = max(1, min(workers, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._load: Callable[[str], Fetched | None] | None = None
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._futures: dict[int, Future] = {}
        self._next = 0

    def plan(self, queries: Sequence[str], load: Callable[[str], Fetched | None]) -> None:
        self.cancel()
        self._load = load
        self._order = list(queries)
        self._index = {normalize_query(q): i for i, q in enumerate(self._order)}
        self._next = 0
        self._top_up()

    def get(self, query: str) -> Fetched | None:
        assert self._load is not None, "plan() first"
        i = self._index.get(normalize_query(query))
        future = None
        if i is not None:
            for skipped in [j for j in self._futures if j < i]:
                self._futures.pop(skipped).cancel()
            future = self._futures.pop(i, None)
            self._next = max(self._next, i + 1)
            self._top_up()
        if future is not None and not future.cancelled():
            return future.result()
        return self._load(query)

    def _top_up(self) -> None:
        if not self.depth:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cache-read-ahead")
        while self._next < len(self._order) and len(self._futures) < self.depth:
            self._futures[self._next] = self._pool.submit(self._load, self._order[self._next])
            self._next += 1

    def cancel(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()

    def close(self) -> None:
        self.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _Fetcher:
    """What both sources share: cache reads, image checks, the guard, counters."""

    def __init__(self, cache_dir: Path, n_images: int, guard: LeakageGuard | None,
                 read_ahead: int = 1, read_ahead_workers: int = 4):
        if n_images < 1:
            raise ValueError(f"n_images must be at least 1, got {n_images}")
        self._ahead = _ReadAhead(read_ahead, read_ahead_workers)
        self.cache_dir = Path(cache_dir)
        self.n_images = n_images
        self.guard = guard
        self.split: str | None = None
        self.cache: ImageCache | None = None
        self.counts = _counters()
        self._count_lock = threading.Lock()  # the live source counts from two threads

    def add(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            self.counts[name] += n

    def tally(self, handed_out: dict[str, Fetched]) -> None:
        """Counts what a take() hands out: one reason per query left out, guard drops."""
        for fetched in handed_out.values():
            if fetched.reason:
                self.add(fetched.reason)
            if fetched.dropped_leaked:
                self.add("dropped_leaked", fetched.dropped_leaked)

    def _begin(self, split: str, queries: Sequence[str]) -> ImageCache:
        if self.split is not None:
            raise RuntimeError(f"a pass over {self.split!r} is still open: call end_pass first")
        cache = ImageCache(self.cache_dir, split)
        cache.sweep()
        self.split, self.cache = split, cache
        self.counts = _counters()
        self.counts["queries"] = len(queries)
        self.counts["distinct"] = len(_distinct(queries))
        return cache

    def _end(self) -> dict:
        if self.split is None:
            raise RuntimeError("no pass is open")
        self._ahead.cancel()
        self.split = self.cache = None
        return dict(self.counts)

    def _require_pass(self) -> ImageCache:
        if self.cache is None:
            raise RuntimeError("take() outside a pass: call start_pass first")
        return self.cache

    def finish(self, query: str, images: list[bytes], *, from_cache: bool,
               invalid: int = 0) -> Fetched:
        """A Fetched from images already checked, with the guard applied and the reason set
        (counted when handed out, see ``tally``)."""
        if invalid:
            self.add("invalid_images", invalid)
        images = images[:self.n_images]
        dropped = 0
        if self.guard is not None and images:
            images, dropped = self.guard.filter(images)
        reason = None
        if not images:
            reason = "leaked" if dropped else "failed"
        return Fetched(query=query, images=images, reason=reason, from_cache=from_cache,
                       dropped_leaked=dropped)

    def plan_reads(self, queries: Sequence[str]) -> None:
        """The cache entries this pass will read, in order of use: read ahead of take()."""
        cache = self._require_pass()

        def load(query: str) -> Fetched | None:
            found = cache.read(query)
            if found is None:
                return None
            return self.finish(query, found.images, from_cache=True, invalid=found.invalid)

        self._ahead.plan(queries, load)

    def from_cache(self, query: str) -> Fetched | None:
        """The cached entry of the query, re-validated and guarded; None if never cached."""
        self._require_pass()
        fetched = self._ahead.get(query)
        return None if fetched is None else _copy_for(query, fetched)


class CacheSource(_Fetcher):
    """Reads the crawled-image cache only; a query never crawled is ``not_cached``."""

    def wait_for_login(self, timeout_s: float, on_waiting: Callable[[list[int]], None]) -> bool:
        return True

    def prefetch(self, split: str, queries: Sequence[str]) -> None:
        pass  # nothing to fetch: the cache is all there is

    def start_pass(self, split: str, queries: Sequence[str], pass_index: int) -> None:
        self._begin(split, queries)
        self.plan_reads(_distinct(queries))

    def take(self, queries: Sequence[str]) -> dict[str, Fetched]:
        self._require_pass()
        out: dict[str, Fetched] = {}
        for query in _distinct(queries):
            fetched = self.from_cache(query)
            if fetched is None:
                fetched = Fetched(query=query, reason="not_cached")
            else:
                self.add("cache_hits")
            out[query] = fetched
        out = _by_spelling(queries, out)
        self.tally(out)
        return out

    def end_pass(self) -> dict:
        return self._end()

    def close(self) -> None:
        self._ahead.close()


@dataclass
class _Flight:
    """A submitted request not answered yet."""

    norm: str
    split: str
    pass_index: int
    expires_at: float  # monotonic time after which its slot in the window is given up
    query: str = ""


@dataclass
class _Arrived:
    """A result that came in for the current pass; ``fetched`` is None once it was spilled
    to the cache only, to bound memory (it is re-read from the cache when taken)."""

    fetched: Fetched | None
    status: str = "ok"


@dataclass
class _PassState:
    split: str
    pass_index: int
    # (normalised, original) to submit, in order; an entry whose normalised text is no longer
    # in ``queued`` is stale (promoted or answered from elsewhere) and skipped.
    pending: collections.deque = field(default_factory=collections.deque)
    queued: set = field(default_factory=set)        # normalised, waiting to be submitted
    submitted: set = field(default_factory=set)     # normalised, sent this pass
    cache_hits: set = field(default_factory=set)    # normalised, served from the cache
    uses_left: collections.Counter = field(default_factory=collections.Counter)
    arrived: dict = field(default_factory=dict)     # normalised -> _Arrived
    marked_late: set = field(default_factory=set)   # normalised, handed out as "late"
    held: int = 0                                   # arrived entries whose bytes are in memory
    # normalised, queued and answered by a prefetch request already in flight (not asked again
    # unless that request expires)
    prefetching: set = field(default_factory=set)


class LiveSource(_Fetcher):
    """Crawls ahead of use through the crawler pool; writes every result to the cache."""

    def __init__(self, *, cache_dir: Path, job_id: str, rank: int, n_images: int, window: int,
                 wait_s: float, redis_url: str, request_ttl_s: float,
                 guard: LeakageGuard | None, expiry_grace_s: float = 60.0,
                 max_held: int | None = None):
        super().__init__(cache_dir, n_images, guard, read_ahead=window)
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if wait_s < 0 or request_ttl_s <= 0:
            raise ValueError("wait_s must be >= 0 and request_ttl_s > 0")
        self.window = window
        self.wait_s = wait_s
        self.request_ttl_s = request_ttl_s
        self.expiry_grace_s = expiry_grace_s
        # Arrived results kept in memory before take(); more are re-read from the cache.
        self.max_held = max_held if max_held is not None else 4 * window
        self.client = CrawlClient(redis_url, job_id=job_id, rank=rank)
        self._cond = threading.Condition()
        self._flights: dict[str, _Flight] = {}
        self._pass: _PassState | None = None
        # Asked before any pass (the job's start): (split, normalised, query), submitted when
        # the window has room and no pass is waiting; the results only fill the cache.
        self._prefetch: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

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
        wanted = [(split, normalize_query(q), q) for q in _distinct(queries) if q not in cache]
        with self._cond:
            self._prefetch.extend(wanted)
            self._cond.notify_all()
        self._start_thread()

    # ---- a pass ---------------------------------------------------------------------------
    def start_pass(self, split: str, queries: Sequence[str], pass_index: int) -> None:
        cache = self._begin(split, queries)
        state = _PassState(split=split, pass_index=pass_index)
        for query in queries:
            state.uses_left[normalize_query(query)] += 1
        cached = []
        # Under the lock: a prefetch result handled between sorting the queries and installing
        # the pass would otherwise be waited for in vain.
        with self._cond:
            prefetching = {f.norm for f in self._flights.values()
                           if f.pass_index == PREFETCH_PASS and f.split == split}
            for query in _distinct(queries):
                norm = normalize_query(query)
                if query in cache:
                    state.cache_hits.add(norm)
                    cached.append(query)
                elif norm in prefetching:
                    state.queued.add(norm)
                    state.prefetching.add(norm)
                else:
                    state.pending.append((norm, query))
                    state.queued.add(norm)
            self.counts["from_prefetch"] = len(state.prefetching)
            self._pass = state
            self._cond.notify_all()
        self.plan_reads(cached)
        self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="crawl-ahead", daemon=True)
            self._thread.start()

    def take(self, queries: Sequence[str]) -> dict[str, Fetched]:
        self._require_pass()
        started = time.monotonic()
        deadline = started + self.wait_s
        wanted = _distinct(queries)
        out: dict[str, Fetched] = {}
        with self._cond:
            state = self._pass
            assert state is not None
            waiting = []
            for query in wanted:
                norm = normalize_query(query)
                if norm in state.cache_hits:
                    continue
                if norm not in state.submitted and norm not in state.queued and norm not in state.arrived:
                    state.uses_left[norm] += 1  # not announced in start_pass
                    state.queued.add(norm)
                if norm in state.queued and norm not in state.prefetching:
                    # Needed now: ahead of queries needed later (the old entry goes stale).
                    state.pending.appendleft((norm, query))
                waiting.append(norm)
            self._cond.notify_all()
            while any(norm not in state.arrived and norm not in state.cache_hits
                      for norm in waiting):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            for query in wanted:
                norm = normalize_query(query)
                state.uses_left[norm] -= 1
                if norm in state.cache_hits:
                    continue
                got = state.arrived.get(norm)
                if got is None:
                    state.marked_late.add(norm)
                    out[query] = Fetched(query=query, reason="late")
                elif got.fetched is not None:
                    out[query] = _copy_for(query, got.fetched)
                    if state.uses_left[norm] <= 0:
                        got.fetched = None  # taken for the last time: free the bytes
                        state.held -= 1
            self.add("wait_ms", int((time.monotonic() - started) * 1000))
        # Cache hits and spilled results are read here, outside the lock.
        for query in wanted:
            if query in out:
                continue
            norm = normalize_query(query)
            fetched = self.from_cache(query)
            if norm in state.cache_hits:
                self.add("cache_hits")
            if fetched is None:
                # Arrived with nothing to cache (a failed crawl), or the entry vanished.
                fetched = Fetched(query=query, reason="failed")
            out[query] = fetched
        out = _by_spelling(queries, out)
        self.tally(out)
        return out

    def end_pass(self) -> dict:
        with self._cond:
            self._pass = None
        # Requests still in flight stay known: their results are written to the cache.
        return self._end()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._ahead.close()
        self.client.close()

    # ---- the background thread ------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._fill_window()
                for result in self.client.collect(block_ms=_COLLECT_BLOCK_MS):
                    self._on_result(result)
                self._expire()
            except Exception as exc:  # Redis away, a broken entry: keep going, say so
                self.errors += 1
                log.warning("crawl-ahead: %s", exc)
                self._stop.wait(1.0)

    def _fill_window(self) -> None:
        while True:
            with self._cond:
                if len(self._flights) >= self.window:
                    return
                state = self._pass
                if state is not None:
                    while state.pending and state.pending[0][0] not in state.queued:
                        state.pending.popleft()  # stale
                if state is not None and state.pending:
                    norm, query = state.pending.popleft()
                    state.queued.discard(norm)
                    state.submitted.add(norm)
                    split, pass_index = state.split, state.pass_index
                    self.add("submitted")
                else:
                    # The pass has asked for all it needs: crawl what the job will need later.
                    ahead = self._next_prefetch(state)
                    if ahead is None:
                        return
                    split, norm, query = ahead
                    pass_index = PREFETCH_PASS
                request = self.client.make_request(query, split=split, pass_index=pass_index,
                                                   n_images=self.n_images, ttl_s=self.request_ttl_s)
                self._flights[request.request_id] = _Flight(
                    norm=norm, split=split, pass_index=pass_index, query=query,
                    expires_at=time.monotonic() + self.request_ttl_s + self.expiry_grace_s)
                with self._count_lock:
                    self.counts["max_in_flight"] = max(self.counts["max_in_flight"], len(self._flights))
            try:
                self.client.submit(request)
            except Exception:
                with self._cond:  # not sent: give the slot back, ask again later
                    self._flights.pop(request.request_id, None)
                    if pass_index == PREFETCH_PASS:
                        self._prefetch.appendleft((split, norm, query))
                    else:
                        self.add("submitted", -1)
                        state.submitted.discard(norm)
                        state.queued.add(norm)
                        state.pending.appendleft((norm, query))
                raise

    def _next_prefetch(self, state: _PassState | None) -> tuple[str, str, str] | None:
        """The next query to crawl ahead that nobody has asked for since (under the lock)."""
        while self._prefetch:
            split, norm, query = self._prefetch.popleft()
            if state is not None and state.split == split and (
                    norm in state.queued or norm in state.submitted or norm in state.cache_hits):
                continue  # the pass has it in hand
            if query in ImageCache(self.cache_dir, split):
                continue
            return split, norm, query
        return None

    def _on_result(self, result: CrawlResult) -> None:
        images, invalid = keep_valid_jpegs(result.images)
        if images:
            ImageCache(self.cache_dir, result.split).put(
                result.query, images, request_id=result.request_id, status=result.status,
                crawler_rank=result.rank, source="crawl")
        with self._cond:
            flight = self._flights.pop(result.request_id, None)
            state = self._pass
            current = (flight is not None and state is not None and flight.split == state.split
                       and flight.pass_index == state.pass_index and flight.norm in state.submitted)
            if not current:
                # An earlier pass's, run's or the prefetch's result: cached. If this pass still
                # waits to ask for the same query, the cache now answers it.
                norm = normalize_query(result.query)
                if state is None or result.split != state.split or norm not in state.queued:
                    return
                if images:
                    state.queued.discard(norm)
                    state.prefetching.discard(norm)
                    state.cache_hits.add(norm)
                    self._cond.notify_all()
                elif norm in state.prefetching:
                    # The request this pass waited on failed: that is the pass's answer.
                    state.queued.discard(norm)
                    state.prefetching.discard(norm)
                    state.arrived[norm] = _Arrived(None, result.status)
                    self._cond.notify_all()
                return
            if flight.norm in state.arrived:
                return  # one result per query and pass
            self.add("arrived")
            if flight.norm in state.marked_late:
                self.add("arrived_late")
            if images and (state.held >= self.max_held or state.uses_left[flight.norm] <= 0):
                # Kept in the cache only: memory stays bounded, and a result that came after
                # its last use (late) is not held at all.
                state.arrived[flight.norm] = _Arrived(None, result.status)
                if invalid:
                    self.add("invalid_images", invalid)
            else:
                fetched = self.finish(result.query, images, from_cache=False, invalid=invalid)
                state.arrived[flight.norm] = _Arrived(fetched, result.status)
                state.held += 1
            self._cond.notify_all()

    def _expire(self) -> None:
        now = time.monotonic()
        with self._cond:
            state = self._pass
            for request_id in [r for r, f in self._flights.items() if f.expires_at < now]:
                flight = self._flights.pop(request_id)
                self.add("expired")
                if (state is not None and flight.pass_index == PREFETCH_PASS and flight.split == state.split
                        and flight.norm in state.prefetching):
                    # The pass waited on it: ask again, now.
                    state.prefetching.discard(flight.norm)
                    state.pending.appendleft((flight.norm, flight.query))
                    self._cond.notify_all()


def _by_spelling(queries: Sequence[str], found: dict[str, Fetched]) -> dict[str, Fetched]:
    """One entry per distinct text of the batch: spellings that normalise alike share the
    result fetched for the first of them."""
    by_norm = {normalize_query(query): fetched for query, fetched in found.items()}
    return {query: found.get(query) or _copy_for(query, by_norm[normalize_query(query)])
            for query in dict.fromkeys(queries)}


def _copy_for(query: str, fetched: Fetched) -> Fetched:
    """The stored result handed out under the spelling the batch used."""
    return Fetched(query=query, images=list(fetched.images), reason=fetched.reason,
                   from_cache=fetched.from_cache, dropped_leaked=fetched.dropped_leaked)


def make_source(mode: Literal["live", "cache"], *, cache_dir: Path, job_id: str, rank: int,
                n_images: int, window: int, wait_s: float, redis_url: str | None,
                request_ttl_s: float, guard: LeakageGuard | None) -> ImageSource:
    if mode == "cache":
        return CacheSource(Path(cache_dir), n_images, guard, read_ahead=window)
    if mode == "live":
        if not redis_url:
            raise ValueError("live image source needs a Redis URL")
        return LiveSource(cache_dir=Path(cache_dir), job_id=job_id, rank=rank, n_images=n_images,
                          window=window, wait_s=wait_s, redis_url=redis_url,
                          request_ttl_s=request_ttl_s, guard=guard)
    raise ValueError(f"unknown image source mode {mode!r} (expected 'live' or 'cache')")
