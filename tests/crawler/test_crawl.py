"""Crawling the real demo shop with a real Celery worker and headless Chromium.

One worker (logged in once) and one shop serve the whole module; each test switches the
shop's faults it needs and clears them afterwards, and uses its own job id.
"""
from __future__ import annotations

import os
import signal
import time
import uuid

import httpx
import pytest

from services.crawler.results import iter_failures
from shared import redis_keys
from shared.image_validation import ImageRules, check_prepared
from shared.messages import CrawlResult
from tests.fixtures_crawler import CrawlClient, CrawlerWorker, log_in
from tests.fixtures_shop import ShopServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N = 5


@pytest.fixture(scope="module")
def module_shop():
    server = ShopServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_redis_url(redis_server):
    return redis_server.url


@pytest.fixture(scope="module")
def client(module_redis_url):
    client = CrawlClient(module_redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def worker(module_redis_url, module_shop, client, tmp_path_factory):
    worker = CrawlerWorker(
        module_redis_url, module_shop.base_url, tmp_path_factory.mktemp("crawler"), rank=0,
        mode="headless",
        env={"CNCLIP_CRAWLER_DOWNLOAD_TIMEOUT_S": "4", "CNCLIP_CRAWLER_DOWNLOAD_ATTEMPTS": "1",
             "CNCLIP_CRAWLER_DOWNLOAD_BACKOFF_S": "0.1"},
    ).start()
    log_in(client, module_shop, 0)
    yield worker
    leftovers = worker.stop()
    assert leftovers == [], leftovers


@pytest.fixture()
def shop(module_shop, worker):
    module_shop.clear_faults()
    yield module_shop
    module_shop.clear_faults()


def crawl(client: CrawlClient, *queries: str, n: int = N, deadline_s: float = 60.0,
          timeout: float = 90.0) -> list[CrawlResult]:
    job = uuid.uuid4().hex[:8]
    requests = [client.submit(q, n_images=n, job_id=job, deadline_s=deadline_s) for q in queries]
    results = client.wait_results(requests[0].reply_stream, len(requests), timeout)
    by_id = {r.request_id: r for r in results}
    assert len(by_id) == len(results) == len(requests)
    return [by_id[r.request_id] for r in requests]


def assert_sound(result: CrawlResult, n: int = N) -> None:
    """Nothing corrupt: every image decodes and meets the size rules; counts add up."""
    for image in result.images:
        info = check_prepared(image, ImageRules(target_short_side=224))
        assert max(info.width, info.height) >= 224
    assert len(result.images) == len(result.image_urls)
    assert len(result.images) + len(result.missing) == n, result
    assert all(m.reason for m in result.missing)
    expected = "ok" if len(result.images) == n else ("partial" if result.images else "failed")
    assert result.status == expected


def test_crawls_the_shop(client, shop):
    results = crawl(client, "红色 T恤", "蓝色 条纹 衬衫", "ＡＢＣ　杯子")
    for result in results:
        assert result.status == "ok", result.missing
        assert_sound(result)
        assert all(url.startswith(shop.base_url + "/img/") for url in result.image_urls)
        assert result.rank == 0
    assert results[2].normalized_query == "ABC 杯子"
    stats = client.redis.hgetall(redis_keys.crawler_stats(0))
    assert int(stats[b"queries"]) >= 3 and int(stats[b"images"]) >= 15


@pytest.mark.parametrize("query", [
    "../../etc/passwd", "a/b/c", "..", "红色\x00T恤", "😀👗 连衣裙", "长" * 500, "%00%2F?q=&s=-1#x",
])
def test_unsafe_queries_are_handled_safely(client, shop, query):
    result, = crawl(client, query)
    assert result.query == query
    assert "\x00" not in result.normalized_query and len(result.normalized_query) <= 100
    assert result.status == "ok", result.missing
    assert_sound(result)


def test_a_query_that_is_empty_after_normalisation_fails_clearly(client, shop):
    result, = crawl(client, " \x00\t ")
    assert result.status == "failed"
    assert result.missing[0].reason == "query is empty after normalisation"
    assert_sound(result)


@pytest.mark.parametrize("kind, reason", [
    ("html", "download failed: not an image: Content-Type text/html"),
    ("truncated", "invalid image: corrupt image"),
    ("huge", "download failed: too large"),
    ("bomb", "invalid image: too many pixels"),
])
def test_every_image_fault_ends_in_a_reason(client, shop, kind, reason):
    shop.set_faults(**{f"image_{kind}": {"items": list(range(0, 100))}})
    if kind == "bomb":
        # The shop builds its bomb once (seconds of compression); not what is under test here.
        first = shop.items(f"{kind} 绿色 裙子", count=1)["items"][0]["image_url"]
        httpx.get(shop.base_url + first, timeout=120)
    broken, = crawl(client, f"{kind} 绿色 裙子")
    assert broken.status == "failed"
    assert_sound(broken)
    assert [m.reason.startswith(reason) for m in broken.missing] == [True] * N, broken.missing
    assert all(m.url and m.url.startswith(shop.base_url) for m in broken.missing)
    logged = [f for f in iter_failures(client.redis, broken.job_id)]
    # the missing ones and the spare results tried in their place
    assert len(logged) >= N and all(f["reason"].startswith(reason) for f in logged)
    # Broken items among good ones: spare results replace them, the replaced are logged.
    shop.set_faults(**{f"image_{kind}": {"items": [1, 3]}})
    mixed, = crawl(client, f"{kind} 黄色 帽子")
    assert mixed.status == "ok", mixed.missing
    assert_sound(mixed)
    replaced = [f for f in iter_failures(client.redis, mixed.job_id)]
    assert len(replaced) == 2 and all("replaced" in f["reason"] for f in replaced)


def test_slow_images_time_out_with_a_reason(client, shop):
    shop.set_faults(image_delay_s=5)
    result, = crawl(client, "慢 图片")
    assert result.status == "failed"
    assert all("timed out" in m.reason for m in result.missing), result.missing
    assert_sound(result)


def test_search_page_faults(client, shop):
    shop.set_faults(search_error=1)                 # one 500 page: the retry gets through
    assert crawl(client, "白色 鞋子")[0].status == "ok"
    shop.set_faults(search_error=-1)
    failed, = crawl(client, "黑色 鞋子")
    assert failed.status == "failed"
    assert failed.missing[0].reason.startswith("search page error") and "500" in failed.missing[0].reason
    shop.set_faults(search_error=0, empty_results=1)
    empty, = crawl(client, "紫色 鞋子")
    assert [m.reason for m in empty.missing] == ["no results for the query"] * N
    assert_sound(empty)
    shop.set_faults(page_delay_s=1.0)
    slow, = crawl(client, "灰色 鞋子")
    assert slow.status == "ok" and slow.elapsed_s >= 1.0


def test_interstitial_backs_off_then_gives_up(client, shop):
    shop.set_faults(captcha=1)
    passed, = crawl(client, "红色 杯子")
    assert passed.status == "ok"
    assert shop.count("search_captcha") >= 1
    shop.set_faults(captcha=-1)
    started = time.monotonic()
    blocked, = crawl(client, "蓝色 杯子")
    assert blocked.status == "failed"
    assert "verify you are human" in blocked.missing[0].reason
    # profile: 0.5 s, then 1 s of backoff before giving up
    assert time.monotonic() - started >= 1.5
    assert_sound(blocked)


def test_paging_collects_more_than_one_page(client, shop):
    result, = crawl(client, "红色 连衣裙", n=50)
    assert result.status == "ok", result.missing
    assert len(set(result.image_urls)) == 50
    assert_sound(result, n=50)


def test_duplicate_deliveries_push_one_result(client, shop):
    request = client.make_request("橙色 背包", job_id=uuid.uuid4().hex[:8])
    for _ in range(3):
        client.send(request)
    client.wait_results(request.reply_stream, 1)
    time.sleep(2.0)  # let the duplicates run
    assert client.redis.xlen(request.reply_stream) == 1
    client.send(request)  # a late redelivery
    time.sleep(1.0)
    assert client.redis.xlen(request.reply_stream) == 1


def test_deadline_already_passed(client, shop):
    result, = crawl(client, "过期 请求", deadline_s=-1)
    assert result.status == "failed"
    assert result.missing[0].reason == "deadline passed before the crawl started"
    assert_sound(result)


def test_deadline_passing_during_the_search(client, shop):
    shop.set_faults(page_delay_s=2.0, search_error=-1)
    result, = crawl(client, "超时 请求", deadline_s=1.5)
    assert result.status == "failed"
    assert "deadline" in result.missing[0].reason or "search page error" in result.missing[0].reason


def test_malformed_request_is_logged_and_the_worker_carries_on(client, shop):
    client.celery.send_task("crawler.crawl", args=[{"query": "x", "job_id": "bad"}], queue="crawl")
    result, = crawl(client, "正常 请求")
    assert result.status == "ok"
    reasons = [f["reason"] for f in iter_failures(client.redis, "bad")]
    assert reasons and reasons[0].startswith("invalid crawl request")


def test_a_crashed_browser_is_restarted(client, shop, worker):
    chromium = [p for p in worker.processes() if p.name() == "chromium"
                and not any(a.startswith("--type=") for a in p.cmdline())]
    assert chromium
    os.kill(chromium[0].pid, signal.SIGKILL)
    result, = crawl(client, "重启 浏览器")
    assert result.status == "ok", result.missing
    assert_sound(result)
    assert client.login_state(0).state == "logged_in"
    assert "restarting the browser" in worker.log_text() or "browser not answering" in worker.log_text()


def test_session_expiry_mid_crawl_asks_for_a_new_scan(client, shop):
    shop.set_faults(session_expire_after=0)
    job = uuid.uuid4().hex[:8]
    request = client.submit("会话 过期", n_images=N, job_id=job, deadline_s=60)
    state = client.wait_login_state(0, {"waiting_for_scan"}, timeout=30)
    assert state.qr_updated_at is not None
    assert shop.confirm(shop.latest_token()).status_code == 200
    result, = client.wait_results(request.reply_stream, 1, timeout=60)
    assert result.status == "ok", result.missing
    assert client.login_state(0).state == "logged_in"
    assert_sound(result)
