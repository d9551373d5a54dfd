"""Workers without a configured rank claim distinct ranks in Redis and hold them."""
from __future__ import annotations

import pytest

from shared import redis_keys

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_unconfigured_workers_claim_distinct_ranks(crawler_workers, crawl_client):
    first = crawler_workers(rank=None)
    second = crawler_workers(rank=None)
    assert {first.rank, second.rank} == {0, 1}
    for worker in (first, second):
        owner = crawl_client.redis.get(redis_keys.crawler_rank_claim(worker.rank))
        assert owner is not None and owner.decode().endswith(f":{worker.pid}")
        assert crawl_client.redis.ttl(redis_keys.crawler_rank_claim(worker.rank)) > 0
        assert crawl_client.login_state(worker.rank).pid in worker.pool_pids()
    rank = second.rank
    assert second.stop() == []
    assert crawl_client.redis.get(redis_keys.crawler_rank_claim(rank)) is None  # released


def test_the_ready_made_worker_fixture(crawler_worker, crawl_client):
    """``crawler_worker`` (used by other areas' tests) is a logged-in rank 0 that crawls."""
    assert crawl_client.login_state(0).state == "logged_in"
    request = crawl_client.submit("黑色 帽子", n_images=2, job_id="fixture")
    result, = crawl_client.wait_results(request.reply_stream, 1)
    assert result.status == "ok" and len(result.images) == 2
