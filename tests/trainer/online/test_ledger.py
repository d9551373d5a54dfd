"""The crawl ledger alone: no threads, no Redis, no cache; every decision of the live source
about what to ask for, what a batch waits on and what it is handed."""
from __future__ import annotations

from collections import Counter

import pytest

from services.trainer.online.ledger import PREFETCH_PASS, CrawlLedger, Query, distinct, queries_of
from services.trainer.online.types import Fetched


class Tally:
    def __init__(self):
        self.counts = Counter()

    def add(self, name, n=1):
        self.counts[name] += n

    def peak(self, name, value):
        self.counts[name] = max(self.counts[name], value)


def ledger(window=8, max_held=100):
    tally = Tally()
    return CrawlLedger(window, max_held, tally), tally


def send_all(book: CrawlLedger) -> list:
    """Everything the pump would submit now, as (request id, request)."""
    sent = []
    while (request := book.next_request()) is not None:
        request_id = f"r{len(book.flights)}-{request.query.norm}-{request.pass_index}"
        book.sent(request_id, request, expires_at=100.0)
        sent.append((request_id, request))
    return sent


def fetched(text):
    return lambda: Fetched(query=text, images=[b"jpeg"])


def test_a_query_is_normalised_once_and_its_spellings_share_one_request():
    queries = queries_of(["红色 T恤", "红色　T恤", "蓝色"])
    assert queries[0].norm == queries[1].norm != queries[2].norm
    assert [q.text for q in distinct(queries)] == ["红色 T恤", "蓝色"]
    book, _ = ledger()
    book.open_pass("valid", 0, queries, cached=set())
    assert [r.query.text for _, r in send_all(book)] == ["红色 T恤", "蓝色"]


def test_a_pass_serves_the_cache_waits_on_prefetch_and_asks_for_the_rest_in_order():
    book, tally = ledger()
    book.ask_ahead("valid", queries_of(["b"]))
    (prefetch_id, prefetch), = send_all(book)
    assert prefetch.pass_index == PREFETCH_PASS
    from_cache = book.open_pass("valid", 0, queries_of(["a", "b", "c", "d"]), cached={"a"})
    assert [q.text for q in from_cache] == ["a"]
    assert tally.counts["from_prefetch"] == 1  # b is in flight already: not asked twice
    assert [(r.query.text, r.pass_index) for _, r in send_all(book)] == [("c", 0), ("d", 0)]
    assert tally.counts["submitted"] == 2 and tally.counts["max_in_flight"] == 3


def test_the_window_bounds_what_is_in_flight():
    book, _ = ledger(window=2)
    book.open_pass("valid", 0, queries_of(["a", "b", "c"]), cached=set())
    sent = send_all(book)
    assert len(sent) == 2 and book.next_request() is None
    assert book.result(sent[0][0], "valid", "a", "ok", True, fetched("a"))
    assert [r.query.text for _, r in send_all(book)] == ["c"]


def test_a_batch_that_needs_a_query_moves_it_to_the_front():
    book, _ = ledger(window=1)
    book.open_pass("valid", 0, queries_of(["a", "b", "c"]), cached=set())
    waiting = book.need(queries_of(["c"]))
    assert waiting == ["c"] and not book.all_settled(waiting)
    assert [r.query.text for _, r in send_all(book)] == ["c"]  # then the window is full


def test_results_are_handed_out_once_per_use_and_late_ones_are_marked():
    book, tally = ledger()
    queries = queries_of(["a", "b", "a"])
    book.open_pass("valid", 0, queries, cached=set())
    sent = dict((r.query.text, i) for i, r in send_all(book))
    assert book.result(sent["a"], "valid", "a", "ok", True, fetched("a"))
    first = book.hand_out(queries_of(["a", "b"]))
    assert first["a"].ok and first["b"].reason == "late"
    assert book.current.held == 1  # a is used once more
    again = book.hand_out(queries_of(["a"]))
    assert again["a"].ok and book.current.held == 0 and book.current.arrived["a"].fetched is None
    assert book.result(sent["b"], "valid", "b", "ok", True, fetched("b"))
    assert tally.counts["arrived"] == 2 and tally.counts["arrived_late"] == 1
    assert book.current.arrived["b"].fetched is None  # after its last use: cache only


def test_memory_is_bounded_by_spilling_results_to_the_cache():
    book, tally = ledger(max_held=1)
    book.open_pass("valid", 0, queries_of(["a", "b"]), cached=set())
    (a_id, _), (b_id, _) = send_all(book)
    book.result(a_id, "valid", "a", "ok", True, fetched("a"))
    book.result(b_id, "valid", "b", "ok", True, fetched("b"), invalid=2)
    assert book.current.arrived["a"].fetched is not None and book.current.arrived["b"].fetched is None
    assert book.hand_out(queries_of(["b"])) == {}  # read from the cache by the caller
    assert tally.counts["invalid_images"] == 2


def test_a_prefetch_result_answers_the_pass_that_waited_on_it():
    book, _ = ledger()
    book.ask_ahead("valid", queries_of(["ok", "broken"]))
    ids = {r.query.text: i for i, r in send_all(book)}
    book.open_pass("valid", 0, queries_of(["ok", "broken"]), cached=set())
    assert book.result(ids["ok"], "valid", "ok", "ok", True, fetched("ok"))
    assert book.is_cache_hit("ok")
    assert book.result(ids["broken"], "valid", "broken", "failed", False, fetched("broken"))
    assert book.current.arrived["broken"].fetched is None  # failed: the pass's answer
    assert book.next_request() is None and book.all_settled(["ok", "broken"])


def test_a_lost_prefetch_request_is_asked_again_when_it_expires():
    book, tally = ledger()
    book.ask_ahead("valid", queries_of(["q"]))
    send_all(book)
    book.open_pass("valid", 0, queries_of(["q"]), cached=set())
    assert book.next_request() is None  # waited for, not asked again yet
    assert book.expire(now=50.0) is False and book.expire(now=101.0) is True
    request = book.next_request()
    assert (request.query.text, request.pass_index) == ("q", 0) and tally.counts["expired"] == 1


def test_a_request_that_could_not_be_sent_is_asked_again_first():
    book, tally = ledger()
    book.open_pass("valid", 0, queries_of(["a", "b"]), cached=set())
    request = book.next_request()
    book.sent("r-a", request, 100.0)
    book.unsent("r-a", request)
    assert tally.counts["submitted"] == 0 and not book.flights
    assert book.next_request().query.text == "a"


def test_what_this_source_crawled_is_not_asked_ahead_again_and_serves_the_next_pass():
    book, _ = ledger()
    book.open_pass("valid", 0, queries_of(["a"]), cached=set())
    (a_id, _), = send_all(book)
    book.result(a_id, "valid", "a", "ok", True, fetched("a"))
    book.close_pass()
    book.ask_ahead("valid", queries_of(["a"]))
    assert book.next_request() is None
    from_cache = book.open_pass("valid", 1, queries_of(["a"]), cached=set())
    assert from_cache == [Query("a", "a")] and book.next_request() is None


def test_a_result_of_another_run_is_ignored_unless_the_pass_waits_for_its_query():
    book, _ = ledger()
    assert book.result("unknown", "valid", "x", "ok", True, fetched("x")) is False
    book.open_pass("valid", 0, queries_of(["y"]), cached=set())
    assert book.result("unknown-2", "valid", "y", "ok", True, fetched("y")) is True
    assert book.is_cache_hit("y") and book.next_request() is None


def test_a_batch_outside_a_pass_is_refused():
    book, _ = ledger()
    with pytest.raises(RuntimeError, match="start_pass"):
        book.need(queries_of(["a"]))
    with pytest.raises(ValueError, match="window"):
        CrawlLedger(0, 1, Tally())
