"""The crawl ledger of a live image source: which queries a pass wants, which are in flight,
which have arrived, expired or been handed out, and what to ask for next. Pure bookkeeping:
no threads, no Redis, no disk. The source's ``take`` and its pump thread call it under the
source's lock; the pump does the Redis and cache work outside it.

Queries come in as ``Query`` (the text as the batch spelt it and its normalised form, made
once at the edge by ``queries_of``); the ledger keys everything by the normalised form.
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from services.trainer.online.types import Fetched
from shared.query import normalize_query

# The pass index of requests made by ``prefetch`` (before any pass; real passes count from 0).
PREFETCH_PASS = -1


class Query(NamedTuple):
    text: str  # as the batch spelt it
    norm: str  # normalize_query(text)


def queries_of(texts: Iterable[str]) -> list[Query]:
    return [Query(text, normalize_query(text)) for text in texts]


def distinct(queries: Iterable[Query]) -> list[Query]:
    """The queries in order of first use, one per normalised text."""
    seen: set[str] = set()
    out = []
    for query in queries:
        if query.norm not in seen:
            seen.add(query.norm)
            out.append(query)
    return out


class Counters(Protocol):
    def add(self, name: str, n: int = 1) -> None: ...
    def peak(self, name: str, value: int) -> None: ...


@dataclass(frozen=True)
class Request:
    """What to ask the crawler pool for next."""

    query: Query
    split: str
    pass_index: int


@dataclass
class Flight:
    """A submitted request not answered yet."""

    request: Request
    expires_at: float  # monotonic time after which its slot in the window is given up


@dataclass
class Arrived:
    """A result that came in for the current pass; ``fetched`` is None once it was spilled
    to the cache only, to bound memory (it is re-read from the cache when taken)."""

    fetched: Fetched | None
    status: str = "ok"


@dataclass
class PassLedger:
    split: str
    pass_index: int
    # Queries to submit, in order; an entry whose normalised text is no longer in ``queued`` is
    # stale (promoted or answered from elsewhere) and skipped.
    pending: collections.deque = field(default_factory=collections.deque)
    queued: set = field(default_factory=set)        # normalised, waiting to be submitted
    submitted: set = field(default_factory=set)     # normalised, sent this pass
    cache_hits: set = field(default_factory=set)    # normalised, served from the cache
    uses_left: collections.Counter = field(default_factory=collections.Counter)
    arrived: dict = field(default_factory=dict)     # normalised -> Arrived
    marked_late: set = field(default_factory=set)   # normalised, handed out as "late"
    held: int = 0                                   # arrived entries whose bytes are in memory
    # normalised, queued and answered by a prefetch request already in flight (not asked again
    # unless that request expires)
    prefetching: set = field(default_factory=set)

    def settled(self, norm: str) -> bool:
        return norm in self.arrived or norm in self.cache_hits


class CrawlLedger:
    def __init__(self, window: int, max_held: int, counters: Counters):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self.max_held = max_held  # arrived results kept in memory before take()
        self.counters = counters
        self.flights: dict[str, Flight] = {}
        self.current: PassLedger | None = None
        # Asked before any pass (the job's start): (split, query), submitted when the window has
        # room and no pass is waiting; the results only fill the cache.
        self.ahead: collections.deque[tuple[str, Query]] = collections.deque()
        # (split, normalised) this source has written to the cache: asked for again by nobody.
        self.crawled: set[tuple[str, str]] = set()

    # ---- before any pass -------------------------------------------------------------------
    def ask_ahead(self, split: str, queries: Iterable[Query]) -> None:
        self.ahead.extend((split, query) for query in queries)

    # ---- a pass ----------------------------------------------------------------------------
    def open_pass(self, split: str, pass_index: int, queries: Sequence[Query], cached: set[str]) -> list[Query]:
        """Installs the pass over ``queries`` (all uses, in order); ``cached`` holds the
        normalised queries the cache had when the pass started. Returns the queries the pass
        serves from the cache, in order of first use."""
        state = PassLedger(split=split, pass_index=pass_index)
        for query in queries:
            state.uses_left[query.norm] += 1
        prefetching = {f.request.query.norm for f in self.flights.values()
                       if f.request.pass_index == PREFETCH_PASS and f.request.split == split}
        from_cache = []
        for query in distinct(queries):
            if query.norm in cached or (split, query.norm) in self.crawled:
                state.cache_hits.add(query.norm)
                from_cache.append(query)
            elif query.norm in prefetching:
                state.queued.add(query.norm)
                state.prefetching.add(query.norm)
            else:
                state.pending.append(query)
                state.queued.add(query.norm)
        self.counters.add("from_prefetch", len(state.prefetching))
        self.current = state
        return from_cache

    def close_pass(self) -> None:
        # Requests still in flight stay known: their results are written to the cache.
        self.current = None

    def need(self, wanted: Sequence[Query]) -> list[str]:
        """A batch needs ``wanted`` now: what it must wait for moves to the front of the queue."""
        state = self._state()
        waiting = []
        for query in wanted:
            norm = query.norm
            if norm in state.cache_hits:
                continue
            if norm not in state.submitted and norm not in state.queued and norm not in state.arrived:
                state.uses_left[norm] += 1  # not announced in open_pass
                state.queued.add(norm)
            if norm in state.queued and norm not in state.prefetching:
                state.pending.appendleft(query)  # ahead of queries needed later (the old entry goes stale)
            waiting.append(norm)
        return waiting

    def all_settled(self, norms: Iterable[str]) -> bool:
        state = self._state()
        return all(state.settled(norm) for norm in norms)

    def hand_out(self, wanted: Sequence[Query]) -> dict[str, Fetched]:
        """One use of each of ``wanted``: the results held in memory and those not arrived
        (``late``); the others (cache hits, spilled results) are for the caller to read from
        the cache, outside the lock."""
        state = self._state()
        out: dict[str, Fetched] = {}
        for query in wanted:
            norm = query.norm
            state.uses_left[norm] -= 1
            if norm in state.cache_hits:
                continue
            got = state.arrived.get(norm)
            if got is None:
                state.marked_late.add(norm)
                out[query.text] = Fetched(query=query.text, reason="late")
            elif got.fetched is not None:
                out[query.text] = copy_for(query.text, got.fetched)
                if state.uses_left[norm] <= 0:
                    got.fetched = None  # taken for the last time: free the bytes
                    state.held -= 1
        return out

    def is_cache_hit(self, norm: str) -> bool:
        return self.current is not None and norm in self.current.cache_hits

    # ---- the pump --------------------------------------------------------------------------
    def next_request(self) -> Request | None:
        """What to submit next while the window has room: the pass's next query, else one to
        crawl ahead for later; None when there is nothing (or no room)."""
        if len(self.flights) >= self.window:
            return None
        state = self.current
        if state is not None:
            while state.pending and state.pending[0].norm not in state.queued:
                state.pending.popleft()  # stale
            if state.pending:
                query = state.pending.popleft()
                state.queued.discard(query.norm)
                state.submitted.add(query.norm)
                self.counters.add("submitted")
                return Request(query, state.split, state.pass_index)
        while self.ahead:  # the pass has asked for all it needs: crawl what the job will need later
            split, query = self.ahead.popleft()
            if state is not None and state.split == split and (
                    query.norm in state.queued or query.norm in state.submitted or query.norm in state.cache_hits):
                continue  # the pass has it in hand
            if (split, query.norm) in self.crawled:
                continue
            return Request(query, split, PREFETCH_PASS)
        return None

    def sent(self, request_id: str, request: Request, expires_at: float) -> None:
        self.flights[request_id] = Flight(request, expires_at)
        self.counters.peak("max_in_flight", len(self.flights))

    def unsent(self, request_id: str, request: Request) -> None:
        """The request could not be submitted: its slot is given back, and it is asked again."""
        self.flights.pop(request_id, None)
        if request.pass_index == PREFETCH_PASS:
            self.ahead.appendleft((request.split, request.query))
            return
        state = self.current
        self.counters.add("submitted", -1)
        if state is not None and state.pass_index == request.pass_index and state.split == request.split:
            state.submitted.discard(request.query.norm)
            state.queued.add(request.query.norm)
            state.pending.appendleft(request.query)

    def result(self, request_id: str, split: str, norm: str, status: str, cached: bool,
               fetched: Callable[[], Fetched], invalid: int = 0) -> bool:
        """A result came in (already written to the cache when ``cached``); ``norm`` is its
        normalised query, ``fetched`` makes what a batch gets from it. Returns whether a
        waiting ``take`` should look again."""
        flight = self.flights.pop(request_id, None)
        if flight is not None and cached:
            self.crawled.add((flight.request.split, flight.request.query.norm))
        elif cached:
            self.crawled.add((split, norm))
        state = self.current
        request = None if flight is None else flight.request
        if (request is None or state is None or request.split != state.split
                or request.pass_index != state.pass_index or request.query.norm not in state.submitted):
            # An earlier pass's, run's or the prefetch's result: cached. If this pass still
            # waits to ask for the same query, the cache now answers it.
            if state is None or split != state.split or norm not in state.queued:
                return False
            if cached:
                state.queued.discard(norm)
                state.prefetching.discard(norm)
                state.cache_hits.add(norm)
                return True
            if norm in state.prefetching:
                # The request this pass waited on failed: that is the pass's answer.
                state.queued.discard(norm)
                state.prefetching.discard(norm)
                state.arrived[norm] = Arrived(None, status)
                return True
            return False
        norm = request.query.norm
        if norm in state.arrived:
            return False  # one result per query and pass
        self.counters.add("arrived")
        if norm in state.marked_late:
            self.counters.add("arrived_late")
        if cached and (state.held >= self.max_held or state.uses_left[norm] <= 0):
            # Kept in the cache only: memory stays bounded, and a result that came after its
            # last use (late) is not held at all.
            state.arrived[norm] = Arrived(None, status)
            if invalid:
                self.counters.add("invalid_images", invalid)
        else:
            state.arrived[norm] = Arrived(fetched(), status)
            state.held += 1
        return True

    def expire(self, now: float) -> bool:
        """Gives up the slots of requests past their time; a prefetch request the pass waited
        on is asked again, now. Returns whether a waiting ``take`` should look again."""
        state = self.current
        changed = False
        for request_id in [r for r, f in self.flights.items() if f.expires_at < now]:
            request = self.flights.pop(request_id).request
            self.counters.add("expired")
            if (state is not None and request.pass_index == PREFETCH_PASS and request.split == state.split
                    and request.query.norm in state.prefetching):
                state.prefetching.discard(request.query.norm)
                state.pending.appendleft(request.query)
                changed = True
        return changed

    def _state(self) -> PassLedger:
        if self.current is None:
            raise RuntimeError("no pass is open: call start_pass first")
        return self.current


def copy_for(text: str, fetched: Fetched) -> Fetched:
    """The stored result handed out under the spelling the batch used."""
    return Fetched(query=text, images=list(fetched.images), reason=fetched.reason,
                   from_cache=fetched.from_cache, dropped_leaked=fetched.dropped_leaked)
