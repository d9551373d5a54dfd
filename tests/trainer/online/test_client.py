"""The trainer's crawl client against a real Redis (and, at the end, a real crawler worker)."""
from __future__ import annotations

import base64
import json
import time

import pytest

from services.crawler.results import ResultPublisher
from services.trainer.online.client import CrawlClient, request_id_for
from shared import redis_keys
from shared.messages import CrawlResult, LoginState
from shared.redis_keys import CRAWL_QUEUE
from shared.tasks import CRAWL_TASK


@pytest.fixture()
def client(redis_url):
    c = CrawlClient(redis_url, job_id="job-a", rank=1)
    yield c
    c.close()


def _result(request_id: str, query: str = "红色 T恤", images: tuple[bytes, ...] = (b"a", b"b")) -> CrawlResult:
    return CrawlResult(request_id=request_id, job_id="job-a", split="valid", query=query,
                       normalized_query=query, status="ok", rank=0, elapsed_s=0.1,
                       images=list(images))


def test_request_ids_are_one_per_job_split_normalised_query_and_pass():
    base = request_id_for("j", "valid", "红色 T恤", 0)
    assert base == request_id_for("j", "valid", "  红色\u3000Ｔ恤 ", 0)  # same after normalisation
    others = {request_id_for("j", "valid", "红色 T恤", 1), request_id_for("k", "valid", "红色 T恤", 0),
              request_id_for("j", "test", "红色 T恤", 0), request_id_for("j", "valid", "蓝色 T恤", 0)}
    assert base not in others and len(others) == 4
    assert len(base) == 32 and int(base, 16) >= 0


def test_submit_sends_the_crawl_task_as_json_on_the_crawl_queue(client, redis_client):
    request = client.make_request("红色 T恤", split="valid", pass_index=2, n_images=3, ttl_s=30)
    assert request.reply_stream == redis_keys.crawl_results("job-a", 1)
    assert time.time() + 25 < request.deadline <= time.time() + 30
    client.submit(request)
    raw = redis_client.lrange(CRAWL_QUEUE, 0, -1)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == CRAWL_TASK
    assert message["content-type"] == "application/json"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [request.model_dump()] and kwargs == {}


def test_a_request_for_another_stream_is_refused(client, redis_url):
    other = CrawlClient(redis_url, job_id="job-a", rank=2)
    try:
        request = other.make_request("q", split="valid", pass_index=0, n_images=1, ttl_s=10)
        with pytest.raises(ValueError, match="not to this rank's stream"):
            client.submit(request)
    finally:
        other.close()


def test_bad_arguments_are_refused(redis_url):
    with pytest.raises(ValueError, match="job_id"):
        CrawlClient(redis_url, job_id="", rank=0)
    with pytest.raises(ValueError, match="rank"):
        CrawlClient(redis_url, job_id="j", rank=-1)


def test_collect_reads_in_order_deletes_what_it_read_and_drops_duplicates(client, redis_client):
    publisher = ResultPublisher(redis_client, rank=0, done_ttl_s=60, failures_maxlen=100)
    assert client.collect(block_ms=50) == []
    for i in range(3):
        publisher.publish(_result(f"r{i}", query=f"q{i}"), client.reply_stream)
    # A duplicate that slipped past the crawler's mark (e.g. pushed by another path).
    redis_client.xadd(client.reply_stream, _result("r1", query="q1").to_stream_fields())
    got = client.collect(block_ms=100)
    assert [r.request_id for r in got] == ["r0", "r1", "r2"]
    assert got[0].images == [b"a", b"b"]
    assert redis_client.xlen(client.reply_stream) == 0  # Redis holds only what is in flight
    publisher.publish(_result("r3", query="q3"), client.reply_stream)
    assert [r.request_id for r in client.collect(block_ms=100)] == ["r3"]
    assert client.collect() == []


def test_collect_blocks_until_a_result_arrives_or_the_time_is_up(client):
    started = time.monotonic()
    assert client.collect(block_ms=300) == []
    assert time.monotonic() - started >= 0.25


def test_results_pushed_before_the_client_started_are_read(redis_url, redis_client):
    stream = redis_keys.crawl_results("job-b", 0)
    redis_client.xadd(stream, _result("early").to_stream_fields())
    c = CrawlClient(redis_url, job_id="job-b", rank=0)
    try:
        assert [r.request_id for r in c.collect(block_ms=100)] == ["early"]
    finally:
        c.close()
    assert not redis_client.exists(stream)


def test_logged_in_ranks_are_those_logged_in_with_a_fresh_state(client, redis_client):
    now = time.time()
    states = {0: LoginState(rank=0, state="logged_in", updated_at=now),
              1: LoginState(rank=1, state="logged_in", updated_at=now - 120),   # stale: worker gone
              2: LoginState(rank=2, state="waiting_for_scan", updated_at=now),
              3: LoginState(rank=3, state="logged_in", updated_at=now - 5)}
    for rank, state in states.items():
        redis_client.hset(redis_keys.crawler_login(rank), mapping=state.to_hash())
        redis_client.sadd(redis_keys.crawler_ranks(), rank)
    redis_client.sadd(redis_keys.crawler_ranks(), 7)  # announced, no state yet
    redis_client.hset(redis_keys.crawler_login(8), mapping={"rank": "not json"})
    redis_client.sadd(redis_keys.crawler_ranks(), 8)
    assert client.known_ranks() == [0, 1, 2, 3, 7, 8]
    assert client.logged_in_ranks() == [0, 3]


@pytest.mark.browser
@pytest.mark.slow
def test_a_real_crawler_answers_a_submitted_request(redis_url, crawler_worker):
    client = CrawlClient(redis_url, job_id="job-live", rank=0)
    try:
        assert client.logged_in_ranks() == [0]
        request = client.submit(client.make_request("红色 条纹 T恤", split="valid", pass_index=0,
                                                    n_images=2, ttl_s=60))
        got: list[CrawlResult] = []
        deadline = time.monotonic() + 90
        while not got and time.monotonic() < deadline:
            got = client.collect(block_ms=500)
        assert [r.request_id for r in got] == [request.request_id]
        assert got[0].status == "ok" and len(got[0].images) == 2
        assert all(image[:2] == b"\xff\xd8" for image in got[0].images)
    finally:
        client.close()
