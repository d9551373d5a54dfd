"""Image sources: the cache alone, and live against real crawler workers on the real shop."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from PIL import Image

from services.crawler.results import ResultPublisher
from services.trainer.online.leakage import LeakageGuard
from services.trainer.online.sources import make_source
from shared import redis_keys
from shared.image_cache import ImageCache
from shared.messages import CrawlRequest, CrawlResult
from shared.redis_keys import CRAWL_QUEUE
from tests.fixtures_crawler import log_in

QUERIES = ["红色 条纹 T恤", "蓝色 波点 杯子", "绿色 格子 帽子", "黄色 纯色 包",
           "黑色 条纹 鞋子", "白色 星星 瓶子", "灰色 波点 裤子", "粉色 格子 连衣裙"]


def _jpeg(colour: tuple[int, int, int], size: int = 96) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (size, size), colour)
    image.paste((255 - colour[0], 30, 200), (size // 4, size // 4, size // 2, size))
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _cache_source(tmp_path, guard=None, n_images=2):
    return make_source("cache", cache_dir=tmp_path, job_id="j", rank=0, n_images=n_images, window=4,
                       wait_s=1.0, redis_url=None, request_ttl_s=60, guard=guard)


def _live_source(tmp_path, redis_url, *, job_id, window=2, wait_s=60.0, n_images=2, guard=None):
    return make_source("live", cache_dir=tmp_path / "cache", job_id=job_id, rank=0, n_images=n_images,
                       window=window, wait_s=wait_s, redis_url=redis_url, request_ttl_s=120, guard=guard)


# ---- cache mode -------------------------------------------------------------------------
def test_cache_mode_reads_the_cache_and_names_what_is_missing(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    red, green, blue = _jpeg((200, 0, 0)), _jpeg((0, 200, 0)), _jpeg((0, 0, 200))
    cache.put("红色 T恤", [red, green, blue])
    broken = cache.put("坏图", [b"not a jpeg", red[:100]])
    source = _cache_source(tmp_path)
    assert source.wait_for_login(0, lambda ranks: pytest.fail("cache mode needs no login"))
    source.start_pass("valid", ["红色 T恤", "坏图", "没有缓存", "红色　T恤"], pass_index=0)
    got = source.take(["红色 T恤", "坏图", "没有缓存", "红色 T恤", "红色　T恤"])
    assert list(got) == ["红色 T恤", "坏图", "没有缓存", "红色　T恤"]  # one per distinct text
    assert got["红色 T恤"].images == [red, green] and got["红色 T恤"].from_cache  # n_images = 2
    assert got["红色　T恤"].images == [red, green] and got["红色　T恤"].query == "红色　T恤"
    assert got["坏图"].reason == "failed" and not got["坏图"].ok
    assert got["没有缓存"].reason == "not_cached"
    counts = source.end_pass()
    assert counts["queries"] == 4 and counts["distinct"] == 3
    assert counts["cache_hits"] == 2 and counts["invalid_images"] == len(broken)
    assert counts["failed"] == 1 and counts["not_cached"] == 1
    source.close()


def test_cache_mode_applies_the_leakage_guard(tmp_path):
    gallery = _jpeg((10, 120, 240), size=128)
    cache = ImageCache(tmp_path, "test")
    other = _jpeg((240, 240, 0))
    cache.put("有泄漏", [gallery, other])
    cache.put("全是图库", [gallery])
    source = _cache_source(tmp_path, guard=LeakageGuard.from_images([gallery]))
    source.start_pass("test", ["有泄漏", "全是图库"], pass_index=0)
    got = source.take(["有泄漏", "全是图库"])
    assert got["有泄漏"].images == [other] and got["有泄漏"].dropped_leaked == 1
    assert got["全是图库"].reason == "leaked" and got["全是图库"].dropped_leaked == 1
    counts = source.end_pass()
    assert counts["leaked"] == 1 and counts["dropped_leaked"] == 2


def test_misuse_is_refused_with_a_clear_error(tmp_path):
    source = _cache_source(tmp_path)
    with pytest.raises(RuntimeError, match="start_pass"):
        source.take(["q"])
    source.start_pass("valid", ["q"], 0)
    with pytest.raises(RuntimeError, match="still open"):
        source.start_pass("valid", ["q"], 1)
    source.end_pass()
    with pytest.raises(RuntimeError, match="no pass"):
        source.end_pass()
    with pytest.raises(ValueError, match="mode"):
        make_source("offline", cache_dir=tmp_path, job_id="j", rank=0, n_images=1, window=1,
                    wait_s=1, redis_url=None, request_ttl_s=1, guard=None)
    with pytest.raises(ValueError, match="Redis URL"):
        make_source("live", cache_dir=tmp_path, job_id="j", rank=0, n_images=1, window=1,
                    wait_s=1, redis_url=None, request_ttl_s=1, guard=None)
    with pytest.raises(ValueError, match="n_images"):
        _cache_source(tmp_path, n_images=0)


# ---- live mode: real crawler workers ------------------------------------------------------


class QueueWatcher:
    """Samples the crawl queue's length in the background: requests waiting for a worker."""

    def __init__(self, redis_client):
        self.redis = redis_client
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, self.redis.llen(CRAWL_QUEUE))
            time.sleep(0.02)

    def __enter__(self) -> "QueueWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.browser
@pytest.mark.slow
def test_live_results_arrive_the_cache_fills_and_the_window_holds(tmp_path, redis_url, redis_client,
                                                                  crawler_worker, shop):
    ImageCache(tmp_path / "cache", "valid").put(QUERIES[0], [_jpeg((200, 0, 0))])  # crawled before
    shop.set_faults(page_delay_s=0.3)  # crawls take long enough for requests to pile up
    source = _live_source(tmp_path, redis_url, job_id="job-window", window=2)
    assert source.wait_for_login(5, lambda ranks: pytest.fail("rank 0 is logged in"))
    order = QUERIES + QUERIES[:2]  # a pass may use a query twice
    batches = [order[i:i + 3] for i in range(0, len(order), 3)]
    with QueueWatcher(redis_client) as watcher:
        source.start_pass("valid", order, pass_index=0)
        got = {}
        for batch in batches:
            got.update(source.take(batch))
            time.sleep(0.5)  # the learner's step: the crawl goes on meanwhile
        counts = source.end_pass()
    source.close()
    assert all(got[q].ok for q in QUERIES), {q: got[q].reason for q in QUERIES}
    assert got[QUERIES[0]].from_cache and not got[QUERIES[1]].from_cache
    assert all(len(got[q].images) == 2 for q in QUERIES[1:])
    # At most `window` requests in flight: one with the worker, the rest still queued.
    assert counts["max_in_flight"] == 2 and watcher.most <= 2
    assert counts["submitted"] == counts["arrived"] == len(QUERIES) - 1
    assert counts["cache_hits"] == 2 and counts["late"] == counts["failed"] == 0
    assert counts["queries"] == len(order) and counts["distinct"] == len(QUERIES)
    # Every result went to the cache, and the cache alone now gives the same pairs.
    cached = _cache_source(tmp_path / "cache")
    cached.start_pass("valid", QUERIES, pass_index=0)
    again = cached.take(QUERIES)
    assert {q: f.images for q, f in again.items()} == {q: got[q].images for q in QUERIES}
    assert not redis_client.exists(redis_keys.crawl_results("job-window", 0))


@pytest.mark.browser
@pytest.mark.slow
def test_late_results_are_left_out_then_cached(tmp_path, redis_url, crawler_worker, shop):
    shop.set_faults(page_delay_s=1.5)
    source = _live_source(tmp_path, redis_url, job_id="job-late", window=2, wait_s=0.2)
    source.start_pass("valid", QUERIES[:2], pass_index=0)
    got = source.take(QUERIES[:2])
    assert [got[q].reason for q in QUERIES[:2]] == ["late", "late"]
    cache = ImageCache(tmp_path / "cache", "valid")
    deadline = time.monotonic() + 90
    while not all(q in cache for q in QUERIES[:2]) and time.monotonic() < deadline:
        time.sleep(0.2)
    counts = source.end_pass()
    source.close()
    assert all(len(cache.read(q).images) == 2 for q in QUERIES[:2])
    assert counts["late"] == 2 and counts["arrived"] == counts["arrived_late"] == 2


@pytest.mark.browser
@pytest.mark.slow
def test_a_crawler_killed_mid_pass_loses_nothing_and_counts_nothing_twice(
        tmp_path, redis_url, redis_client, crawler_worker, shop):
    shop.set_faults(page_delay_s=0.4)
    queries = QUERIES[:6]
    source = _live_source(tmp_path, redis_url, job_id="job-kill", window=3, wait_s=180)
    source.start_pass("valid", queries, pass_index=0)
    deadline = time.monotonic() + 60
    while source.counts["arrived"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert source.counts["arrived"] >= 1
    crawler_worker.kill_pool_process()  # mid-pass: the worker's parent requeues its task
    got = {}
    for i in range(0, len(queries), 2):
        got.update(source.take(queries[i:i + 2]))
    counts = source.end_pass()
    source.close()
    assert all(got[q].ok for q in queries), {q: got[q].reason for q in queries}
    assert counts["submitted"] == counts["arrived"] == len(queries)
    assert counts["late"] == counts["failed"] == counts["expired"] == 0
    # Each result was pushed once: the crawler counts only results it actually pushed.
    assert int(redis_client.hget(redis_keys.crawler_stats(0), "queries")) == len(queries)


@pytest.mark.browser
@pytest.mark.slow
def test_waiting_for_login_until_the_qr_code_is_confirmed(tmp_path, redis_url, crawler_workers,
                                                          crawl_client, shop):
    crawler_workers(rank=0, mode="headless", wait_for=("waiting_for_scan",))
    source = _live_source(tmp_path, redis_url, job_id="job-login")
    told = []
    assert source.wait_for_login(1.0, told.append) is False
    assert told == [[0]]
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.setdefault(
        "ok", source.wait_for_login(90, told.append)))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive()  # still waiting: nobody scanned
    log_in(crawl_client, shop, 0)
    waiter.join(60)
    source.close()
    assert outcome == {"ok": True} and told == [[0], [0]]


# ---- live mode, answered by hand over real Redis ------------------------------------------
# The crawler's side of the contract played by the test: it takes the real Celery messages
# off the crawl queue and pushes results with the crawler's own ResultPublisher, so each case
# (what arrives, when, or never) is exact.


class HandCrawler:
    def __init__(self, redis_client):
        self.redis = redis_client
        self.publisher = ResultPublisher(redis_client, rank=0, done_ttl_s=600, failures_maxlen=100)

    def queued(self) -> list[CrawlRequest]:
        """Requests waiting in the crawl queue, oldest first (left in place)."""
        raw = self.redis.lrange(CRAWL_QUEUE, 0, -1)[::-1]  # kombu LPUSHes, workers pop the right end
        return [CrawlRequest.model_validate(json.loads(base64.b64decode(json.loads(m)["body"]))[0][0])
                for m in raw]

    def wait_queued(self, n: int, timeout: float = 10.0) -> list[CrawlRequest]:
        deadline = time.monotonic() + timeout
        while len(self.queued()) < n:
            assert time.monotonic() < deadline, f"{len(self.queued())} of {n} requests queued"
            time.sleep(0.02)
        time.sleep(0.3)  # would more come? (they must not)
        return self.queued()

    def answer(self, images_by_query: dict[str, list[bytes]] | None = None, count: int = 1) -> list[str]:
        """Takes the ``count`` oldest requests off the queue and answers them (no images:
        a failed result); returns their queries."""
        done = []
        for _ in range(count):
            raw = self.redis.rpop(CRAWL_QUEUE)
            assert raw is not None, "nothing queued"
            request = CrawlRequest.model_validate(json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0])
            images = (images_by_query or {}).get(request.query, [_jpeg((hash(request.query) % 200, 90, 90))])
            self.push(request, images)
            done.append(request.query)
        return done

    def push(self, request: CrawlRequest, images: list[bytes]) -> None:
        self.publisher.publish(CrawlResult(
            request_id=request.request_id, job_id=request.job_id, split=request.split,
            query=request.query, normalized_query=request.query, rank=0, elapsed_s=0.1,
            status="ok" if images else "failed", images=images), request.reply_stream)


def test_the_window_bounds_requests_and_results_refill_it(tmp_path, redis_url, redis_client):
    hand = HandCrawler(redis_client)
    source = _live_source(tmp_path, redis_url, job_id="job-hand", window=3, wait_s=5)
    source.start_pass("valid", QUERIES, pass_index=0)
    try:
        assert [r.query for r in hand.wait_queued(3)] == QUERIES[:3]
        hand.answer(count=2)
        assert [r.query for r in hand.wait_queued(3)] == QUERIES[2:5]  # two more, in order
        # A batch needed now jumps the queue of what is not submitted yet: once a slot frees,
        # its query goes before QUERIES[5] and QUERIES[6].
        waiter = threading.Thread(target=lambda: source.take([QUERIES[7]]))
        waiter.start()
        time.sleep(0.3)  # the batch is waiting (the window is full)
        assert hand.wait_queued(3)[-1].query == QUERIES[4]
        hand.answer(count=1)
        assert [r.query for r in hand.wait_queued(3)] == [QUERIES[3], QUERIES[4], QUERIES[7]]
        hand.answer(count=3)
        waiter.join(10)
        assert source.counts["max_in_flight"] == 3
    finally:
        source.end_pass()
        source.close()


def test_a_request_never_answered_expires_and_frees_its_slot(tmp_path, redis_url, redis_client):
    hand = HandCrawler(redis_client)
    source = make_source("live", cache_dir=tmp_path, job_id="job-expire", rank=0, n_images=1, window=1,
                         wait_s=0.2, redis_url=redis_url, request_ttl_s=0.5, guard=None)
    source.expiry_grace_s = 0.5
    source.start_pass("valid", QUERIES[:2], pass_index=0)
    lost = hand.wait_queued(1)[0]
    redis_client.rpop(CRAWL_QUEUE)  # taken by a crawler that vanished for good
    assert lost.deadline <= time.time() + 0.5
    assert [r.query for r in hand.wait_queued(1, timeout=10)] == [QUERIES[1]]
    hand.answer()
    got = source.take(QUERIES[:2])
    counts = source.end_pass()
    source.close()
    assert got[QUERIES[0]].reason == "late" and got[QUERIES[1]].ok
    assert counts["expired"] == 1 and counts["arrived"] == 1 and counts["late"] == 1


def test_results_beyond_what_memory_holds_are_served_from_the_cache(tmp_path, redis_url, redis_client):
    hand = HandCrawler(redis_client)
    source = make_source("live", cache_dir=tmp_path, job_id="job-spill", rank=0, n_images=1, window=8,
                         wait_s=10, redis_url=redis_url, request_ttl_s=60, guard=None)
    source.max_held = 2
    source.start_pass("valid", QUERIES, pass_index=0)
    pictures = {q: [_jpeg((20 * i, 100, 150))] for i, q in enumerate(QUERIES)}
    hand.wait_queued(8)
    hand.answer(pictures, count=8)
    deadline = time.monotonic() + 10
    while source.counts["arrived"] < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(1 for a in source.ledger.current.arrived.values() if a.fetched is not None) == 2
    got = source.take(QUERIES)
    counts = source.end_pass()
    source.close()
    assert {q: f.images for q, f in got.items()} == pictures
    assert counts["arrived"] == 8 and counts["failed"] == counts["late"] == 0


def test_a_failed_crawl_is_failed_and_not_cached(tmp_path, redis_url, redis_client):
    hand = HandCrawler(redis_client)
    source = _live_source(tmp_path, redis_url, job_id="job-fail", window=2, wait_s=10)
    source.start_pass("valid", QUERIES[:2], pass_index=0)
    hand.wait_queued(2)
    hand.answer({QUERIES[0]: [], QUERIES[1]: [b"<html>not a picture</html>"]}, count=2)
    got = source.take(QUERIES[:2])
    counts = source.end_pass()
    source.close()
    assert [got[q].reason for q in QUERIES[:2]] == ["failed", "failed"]
    assert counts["failed"] == 2 and counts["invalid_images"] == 1
    assert QUERIES[0] not in ImageCache(tmp_path / "cache", "valid")


def test_results_of_a_restarted_run_are_used_and_a_later_pass_asks_again(tmp_path, redis_url, redis_client):
    hand = HandCrawler(redis_client)
    # A first run submitted pass 0 and died before reading the results.
    first = _live_source(tmp_path, redis_url, job_id="job-restart", window=2, wait_s=0)
    first.start_pass("valid", QUERIES[:2], pass_index=0)
    requests = hand.wait_queued(2)
    first._stop.set()
    first._thread.join()
    first.client.close(drop_stream=False)
    redis_client.delete(CRAWL_QUEUE)
    for request in requests:
        hand.push(request, [_jpeg((5, 5, 5))])
    # The restarted run reads them (one submitted again, one before it was submitted).
    again = _live_source(tmp_path, redis_url, job_id="job-restart", window=1, wait_s=10)
    again.start_pass("valid", QUERIES[:2], pass_index=0)
    got = again.take(QUERIES[:2])
    counts = again.end_pass()
    assert all(got[q].ok for q in QUERIES[:2])
    assert counts["arrived"] + counts["cache_hits"] == 2
    redis_client.delete(CRAWL_QUEUE)  # a crawler finds a re-sent request done and skips it
    # The next pass finds both in the cache and asks for nothing.
    again.start_pass("valid", QUERIES[:2], pass_index=1)
    assert all(f.from_cache for f in again.take(QUERIES[:2]).values())
    assert again.end_pass()["submitted"] == 0 and hand.queued() == []
    # A new query in pass 1 gets a new request id.
    again.start_pass("valid", QUERIES[2:3], pass_index=1)
    (request,) = hand.wait_queued(1)
    assert request.request_id not in {r.request_id for r in requests}
    again.end_pass()
    again.close()


def test_prefetched_queries_are_not_asked_twice_and_their_results_serve_the_pass(tmp_path, redis_url,
                                                                                  redis_client):
    hand = HandCrawler(redis_client)
    source = _live_source(tmp_path, redis_url, job_id="job-prefetch", window=8, wait_s=10)
    try:
        # The job starts: the validation queries are crawled while the model trains.
        source.prefetch("valid", QUERIES[:4])
        assert [r.query for r in hand.wait_queued(4)] == QUERIES[:4]
        hand.answer(count=2)
        cache = ImageCache(tmp_path / "cache", "valid")
        deadline = time.monotonic() + 10
        while not (QUERIES[0] in cache and QUERIES[1] in cache):
            assert time.monotonic() < deadline, "prefetched results never reached the cache"
            time.sleep(0.02)
        # The first pass: two from the cache, two waited for (already asked), one new request.
        source.start_pass("valid", QUERIES[:5], pass_index=0)
        assert [r.query for r in hand.wait_queued(3)] == [QUERIES[2], QUERIES[3], QUERIES[4]]
        hand.answer({QUERIES[3]: []}, count=3)  # the crawl of QUERIES[3] fails
        # All three handled before the batch asks (the harder order: a failed prefetch
        # result must not make the batch ask again).
        deadline = time.monotonic() + 10
        while len(source.ledger.current.arrived) < 2 or QUERIES[2] not in cache:
            assert time.monotonic() < deadline, "results never handled"
            time.sleep(0.02)
        time.sleep(0.3)
        got = source.take(QUERIES[:5])
        time.sleep(0.5)  # a request sent by take() would be queued by now
        counts = source.end_pass()
        left = [(r.query, r.request_id) for r in hand.queued()]
    finally:
        source.close()
    assert left == [], (left, counts)
    assert [got[q].ok for q in QUERIES[:5]] == [True, True, True, False, True]
    assert got[QUERIES[3]].reason == "failed"
    assert counts["from_prefetch"] == 2 and counts["submitted"] == 1 and counts["cache_hits"] == 3


def test_a_prefetch_request_that_is_lost_is_asked_again_by_the_pass(tmp_path, redis_url, redis_client):
    hand = HandCrawler(redis_client)
    source = make_source("live", cache_dir=tmp_path, job_id="job-prefetch-lost", rank=0, n_images=1, window=2,
                         wait_s=20, redis_url=redis_url, request_ttl_s=2.0, guard=None)
    source.expiry_grace_s = 0.5
    try:
        source.prefetch("valid", QUERIES[:1])
        hand.wait_queued(1)
        redis_client.rpop(CRAWL_QUEUE)  # taken by a crawler that vanished for good
        source.start_pass("valid", QUERIES[:1], pass_index=0)
        assert source.counts["from_prefetch"] == 1  # waited for, not asked again yet
        asked_again = hand.wait_queued(1, timeout=15)  # once the lost request expires
        assert asked_again[0].query == QUERIES[0]
        hand.answer()
        got = source.take(QUERIES[:1])
        counts = source.end_pass()
    finally:
        source.close()
    assert got[QUERIES[0]].ok
    assert counts["submitted"] == 1 and counts["expired"] == 1
