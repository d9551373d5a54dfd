"""Image sources: where the learner's crawled images come from. Torch-free.

``make_source`` is the only place that looks at the mode:

- ``cache``: the crawled-image cache only (no Redis, no crawler, no login);
- ``live``: the crawler pool over Redis, crawling ahead of use (live.py: a pure ledger of
  what is wanted and in flight, ledger.py, and a pump thread); every result is also written
  to the cache, and queries the cache already holds are served from it.

Both hand the learner, per ``take``, one ``Fetched`` per distinct text of the batch; what they
share (cache reads ahead of use, the guard, counters) is in reads.py.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

from services.trainer.online.leakage import LeakageGuard
from services.trainer.online.ledger import distinct, queries_of
from services.trainer.online.live import LiveSource
from services.trainer.online.reads import Fetcher, by_spelling
from services.trainer.online.types import Fetched


class ImageSource(Protocol):
    def wait_for_login(self, timeout_s: float, on_waiting: Callable[[list[int]], None]) -> bool: ...
    def prefetch(self, split: str, queries: Sequence[str]) -> None: ...
    def start_pass(self, split: str, queries: Sequence[str], pass_index: int) -> None: ...
    def take(self, queries: Sequence[str]) -> dict[str, Fetched]: ...
    def end_pass(self) -> dict: ...
    def close(self) -> None: ...


class CacheSource(Fetcher):
    """Reads the crawled-image cache only; a query never crawled is ``not_cached``."""

    def wait_for_login(self, timeout_s: float, on_waiting: Callable[[list[int]], None]) -> bool:
        return True

    def prefetch(self, split: str, queries: Sequence[str]) -> None:
        pass  # nothing to fetch: the cache is all there is

    def start_pass(self, split: str, queries: Sequence[str], pass_index: int) -> None:
        planned = queries_of(queries)
        self._begin(split, planned)
        self.plan_reads(distinct(planned))

    def take(self, queries: Sequence[str]) -> dict[str, Fetched]:
        self._require_pass()
        asked = queries_of(queries)
        out: dict[str, Fetched] = {}
        for query in distinct(asked):
            fetched = self.from_cache(query)
            if fetched is None:
                fetched = Fetched(query=query.text, reason="not_cached")
            else:
                self.add("cache_hits")
            out[query.text] = fetched
        out = by_spelling(asked, out)
        self.tally(out)
        return out

    def end_pass(self) -> dict:
        return self._end()

    def close(self) -> None:
        self._ahead.close()


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
