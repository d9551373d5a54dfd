"""What both image sources share (torch-free): reading the crawled-image cache ahead of use,
re-checking images, the leakage guard, a pass's counters, and handing results out under the
spelling each batch used."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from services.trainer.online.leakage import LeakageGuard
from services.trainer.online.ledger import Query, copy_for, distinct
from services.trainer.online.types import Fetched
from shared.image_cache import ImageCache


def _counters() -> dict[str, int]:
    # Every counter an end_pass report carries, in one place.
    return dict.fromkeys(
        ("queries", "distinct", "submitted", "cache_hits", "arrived", "arrived_late", "late",
         "failed", "not_cached", "leaked", "dropped_leaked", "invalid_images", "expired",
         "max_in_flight", "wait_ms", "from_prefetch"), 0)


class ReadAhead:
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
        self._order: list[Query] = []
        self._index: dict[str, int] = {}
        self._futures: dict[int, Future] = {}
        self._next = 0

    def plan(self, queries: Sequence[Query], load: Callable[[str], Fetched | None]) -> None:
        self.cancel()
        self._load = load
        self._order = list(queries)
        self._index = {q.norm: i for i, q in enumerate(self._order)}
        self._next = 0
        self._top_up()

    def get(self, query: Query) -> Fetched | None:
        assert self._load is not None, "plan() first"
        i = self._index.get(query.norm)
        future = None
        if i is not None:
            for skipped in [j for j in self._futures if j < i]:
                self._futures.pop(skipped).cancel()
            future = self._futures.pop(i, None)
            self._next = max(self._next, i + 1)
            self._top_up()
        if future is not None and not future.cancelled():
            return future.result()
        return self._load(query.text)

    def _top_up(self) -> None:
        if not self.depth:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cache-read-ahead")
        while self._next < len(self._order) and len(self._futures) < self.depth:
            self._futures[self._next] = self._pool.submit(self._load, self._order[self._next].text)
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


class Fetcher:
    """Cache reads, image checks, the guard and the counters of a pass."""

    def __init__(self, cache_dir: Path, n_images: int, guard: LeakageGuard | None,
                 read_ahead: int = 1, read_ahead_workers: int = 4):
        if n_images < 1:
            raise ValueError(f"n_images must be at least 1, got {n_images}")
        self._ahead = ReadAhead(read_ahead, read_ahead_workers)
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

    def peak(self, name: str, value: int) -> None:
        with self._count_lock:
            self.counts[name] = max(self.counts[name], value)

    def tally(self, handed_out: dict[str, Fetched]) -> None:
        """Counts what a take() hands out: one reason per query left out, guard drops."""
        for fetched in handed_out.values():
            if fetched.reason:
                self.add(fetched.reason)
            if fetched.dropped_leaked:
                self.add("dropped_leaked", fetched.dropped_leaked)

    def _begin(self, split: str, queries: Sequence[Query]) -> ImageCache:
        if self.split is not None:
            raise RuntimeError(f"a pass over {self.split!r} is still open: call end_pass first")
        cache = ImageCache(self.cache_dir, split)
        cache.sweep()
        self.split, self.cache = split, cache
        self.counts = _counters()
        self.counts["queries"] = len(queries)
        self.counts["distinct"] = len(distinct(queries))
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

    def plan_reads(self, queries: Sequence[Query]) -> None:
        """The cache entries this pass will read, in order of use: read ahead of take()."""
        cache = self._require_pass()

        def load(text: str) -> Fetched | None:
            found = cache.read(text)
            if found is None:
                return None
            return self.finish(text, found.images, from_cache=True, invalid=found.invalid)

        self._ahead.plan(queries, load)

    def from_cache(self, query: Query) -> Fetched | None:
        """The cached entry of the query, re-validated and guarded; None if never cached."""
        self._require_pass()
        fetched = self._ahead.get(query)
        return None if fetched is None else copy_for(query.text, fetched)


def by_spelling(queries: Sequence[Query], found: dict[str, Fetched]) -> dict[str, Fetched]:
    """One entry per distinct text of the batch: spellings that normalise alike share the
    result fetched for the first of them (``found`` is keyed by text)."""
    by_norm: dict[str, Fetched] = {}
    for query in queries:
        if query.text in found:
            by_norm.setdefault(query.norm, found[query.text])
    return {query.text: found.get(query.text) or copy_for(query.text, by_norm[query.norm])
            for query in dict.fromkeys(queries)}
