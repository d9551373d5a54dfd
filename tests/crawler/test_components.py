"""The crawler's parts that need no browser: profiles, settings, politeness, cookies, rank
claims, exactly-once publishing, the failure log and the downloader (over real HTTP)."""
from __future__ import annotations

import http.server
import io
import json
import stat
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from services.crawler import ranks
from services.crawler.cookies import CookieStore
from services.crawler.download import DownloadError, ImageDownloader
from services.crawler.politeness import Politeness
from services.crawler.profile import ProfileError, load_profile
from services.crawler.results import ResultPublisher, export_failures, iter_failures
from services.crawler.settings import CrawlerSettings
from shared import redis_keys
from shared.messages import CrawlResult, MissingImage


# ---- profiles and settings --------------------------------------------------------------
def test_bundled_profiles_load_and_build_search_urls():
    shop = load_profile("shop", base_url="http://127.0.0.1:9999/")
    assert shop.search_url("红色 T恤/..", 1) == \
        "http://127.0.0.1:9999/search?q=%E7%BA%A2%E8%89%B2%20T%E6%81%A4%2F..&s=44"
    taobao = load_profile("taobao")
    assert taobao.search_url("连衣裙", 0).startswith("https://s.taobao.com/search?page=1&q=")
    assert taobao.politeness.min_interval_s >= 5
    assert shop.politeness.min_interval_s == 0


def test_profile_from_a_users_file_and_clear_errors(tmp_path):
    text = (Path(load_profile.__code__.co_filename).parent / "profiles" / "shop.toml").read_text()
    own = tmp_path / "mysite.toml"
    own.write_text(text.replace('name = "shop"', 'name = "mysite"'))
    assert load_profile(str(own)).name == "mysite"
    broken = tmp_path / "broken.toml"
    broken.write_text(text.replace('item = "#mainsrp-itemlist .item"', 'itme = "x"'))
    with pytest.raises(ProfileError) as info:
        load_profile(str(broken))
    assert "item" in str(info.value)
    with pytest.raises(ProfileError, match="unknown site profile"):
        load_profile("nosuchsite")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(str(tmp_path / "missing.toml"))


def test_settings_refuse_a_visibility_timeout_shorter_than_a_task(monkeypatch):
    monkeypatch.setenv("CNCLIP_CRAWLER_TASK_TIME_LIMIT_S", "600")
    monkeypatch.setenv("CNCLIP_CRAWLER_VISIBILITY_TIMEOUT_S", "300")
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        CrawlerSettings()
    monkeypatch.setenv("CNCLIP_CRAWLER_VISIBILITY_TIMEOUT_S", "900")
    monkeypatch.setenv("CNCLIP_REDIS_URL", "redis://example:1/2")
    settings = CrawlerSettings()
    assert settings.redis_url == "redis://example:1/2"
    assert settings.soft_time_limit_s < settings.task_time_limit_s


# ---- politeness -------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_politeness_keeps_the_interval_and_backs_off():
    clock = FakeClock()
    pace = Politeness(8.0, 4.0, backoff_s=30.0, backoff_factor=2.0,
                      clock=clock.clock, sleep=clock.sleep)
    assert pace.wait() == 0.0                      # the first request goes at once
    clock.now += 1.0
    waited = pace.wait()
    assert 7.0 <= waited <= 11.0                   # 8 s + up to 4 s jitter, 1 s already gone
    assert pace.interstitial_backoff() == 30.0
    assert pace.interstitial_backoff() == 60.0     # doubles while interstitials continue
    pace.page_ok()
    assert pace.interstitial_backoff() == 30.0
    # A pause longer than the time left before the request's deadline is not slept at all.
    before = clock.now
    assert pace.interstitial_backoff(limit_s=59.0) is None
    assert clock.now == before
    assert pace.interstitial_backoff(limit_s=61.0) == 60.0
    free = Politeness(0.0, 0.0, 0.0, clock=clock.clock, sleep=clock.sleep)
    free.wait()
    assert free.wait() == 0.0


# ---- cookies ----------------------------------------------------------------------------
def test_cookie_file_is_private_and_drops_expired(tmp_path):
    store = CookieStore.for_rank(tmp_path, "shop", 3, shared=False)
    assert store.load() is None
    store.save([{"name": "s", "value": "1", "domain": "127.0.0.1", "path": "/"},
                {"name": "old", "value": "2", "domain": "127.0.0.1", "expiry": int(time.time()) - 5}])
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert [c["name"] for c in store.load()] == ["s"]
    shared = CookieStore.for_rank(tmp_path, "shop", 3, shared=True)
    assert shared.path != store.path and "shared" in shared.path.name
    store.path.write_text("{not json")
    assert store.load() is None


# ---- ranks ------------------------------------------------------------------------------
def test_rank_claims_are_unique_and_sticky(redis_client, redis_url):
    first = ranks.claim_rank(redis_client, "host:1", max_ranks=2, ttl_s=30)
    second = ranks.claim_rank(redis_client, "host:2", max_ranks=2, ttl_s=30)
    assert {first, second} == {0, 1}
    assert ranks.claim_rank(redis_client, "host:1", max_ranks=2, ttl_s=30) == first
    with pytest.raises(ranks.NoFreeRank):
        ranks.claim_rank(redis_client, "host:3", max_ranks=2, ttl_s=30)
    ranks.release_rank(redis_client, first, "host:1")
    assert ranks.claim_rank(redis_client, "host:3", max_ranks=2, ttl_s=30) == first
    assert not ranks.refresh_claim(redis_client, first, "host:1", 30)
    assert redis_client.ttl(redis_keys.crawler_rank_claim(first)) > 0


# ---- exactly-once results and the failure log -------------------------------------------
def make_result(request_id: str = "r1", images: int = 2) -> CrawlResult:
    return CrawlResult(
        request_id=request_id, job_id="job\t1", split="valid", query="红色\nT恤", normalized_query="红色 T恤",
        status="partial", rank=0, elapsed_s=0.1,
        missing=[MissingImage(url="http://x/1.jpg", reason="download failed: HTTP 404")],
        image_urls=[f"http://x/{i}.jpg" for i in range(images)],
        images=[bytes([i]) * 10 for i in range(images)],
    )


def test_a_result_is_pushed_once_with_its_failures(redis_client):
    publisher = ResultPublisher(redis_client, rank=0, done_ttl_s=60, failures_maxlen=1000)
    stream = redis_keys.crawl_results("job", 0)
    result = make_result()
    assert not publisher.already_done("r1")
    assert publisher.publish(result, stream, pages=1, extra_failures=[("http://x/9.jpg", "spare")])
    assert publisher.already_done("r1")
    assert not publisher.publish(result, stream, pages=1)          # a duplicate delivery
    entries = redis_client.xrange(stream)
    assert len(entries) == 1
    back = CrawlResult.from_stream_fields(entries[0][1])
    assert back.images == result.images and back.missing == result.missing
    failures = list(iter_failures(redis_client))
    assert [f["reason"] for f in failures] == ["download failed: HTTP 404", "spare"]
    stats = redis_client.hgetall(redis_keys.crawler_stats(0))
    assert stats[b"queries"] == b"1" and stats[b"images"] == b"2" and stats[b"failures"] == b"2"
    assert stats[b"status_partial"] == b"1"


def test_concurrent_duplicates_push_exactly_one(redis_client):
    publisher = ResultPublisher(redis_client, rank=0, done_ttl_s=60, failures_maxlen=1000)
    stream = redis_keys.crawl_results("job", 1)
    outcomes: list[bool] = []
    threads = [threading.Thread(target=lambda: outcomes.append(
        publisher.publish(make_result("same"), stream))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False] * 7 + [True]
    assert redis_client.xlen(stream) == 1


def test_failures_export_as_text(redis_client, tmp_path):
    publisher = ResultPublisher(redis_client, rank=0, done_ttl_s=60, failures_maxlen=1000)
    publisher.publish(make_result("a"), redis_keys.crawl_results("job", 0))
    publisher.record_failure({"job_id": "other", "query": "q", "url": None, "reason": "invalid"})
    out = tmp_path / "failures.txt"
    assert export_failures(redis_client, out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["time", "job_id", "split", "query", "url", "reason"]
    first = lines[1].split("\t")
    assert first[1:] == ["job 1", "valid", "红色 T恤", "http://x/1.jpg", "download failed: HTTP 404"]
    assert export_failures(redis_client, out, job_id="other") == 1


def test_failure_export_cli(redis_client, redis_url, tmp_path):
    import subprocess
    import sys

    publisher = ResultPublisher(redis_client, rank=0, done_ttl_s=60, failures_maxlen=1000)
    publisher.publish(make_result("cli"), redis_keys.crawl_results("job", 0))
    out = tmp_path / "mark_log.txt"
    done = subprocess.run([sys.executable, "-m", "services.crawler", "export-failures", "--output",
                           str(out), "--redis-url", redis_url], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HTTP 404" in out.read_text(encoding="utf-8")


# ---- downloads over real HTTP -----------------------------------------------------------
def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 300), (10, 200, 30)).save(out, "JPEG")
    return out.getvalue()


class ImageHandler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        hits = ImageHandler.hits[self.path] = ImageHandler.hits.get(self.path, 0) + 1
        cookie = self.headers.get("Cookie", "")
        if self.path == "/flaky.jpg" and hits < 3:
            self.send_error(503)
            return
        if self.path == "/always500.jpg":
            self.send_error(500)
            return
        if self.path == "/private.jpg" and "session=abc" not in cookie:
            self.send_error(403)
            return
        if self.path == "/page.jpg":
            body, kind = b"<html>login</html>", "text/html; charset=utf-8"
        elif self.path == "/big.jpg":
            body, kind = b"\xff" * 300_000, "image/jpeg"
        elif self.path == "/slow.jpg":
            time.sleep(2.0)
            body, kind = jpeg_bytes(), "image/jpeg"
        else:
            body, kind = jpeg_bytes(), "image/jpeg"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        if self.path != "/big.jpg":  # the big one streams without a declared length
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_downloader_retries_transient_errors_and_explains_the_rest(image_server):
    downloader = ImageDownloader(timeout_s=1.0, max_bytes=100_000, attempts=3, backoff_s=0.01,
                                 concurrency=2, allow_private_hosts=True)  # the server is on loopback
    try:
        assert downloader.fetch(f"{image_server}/flaky.jpg")[:2] == b"\xff\xd8"
        assert ImageHandler.hits["/flaky.jpg"] == 3
        cases = {
            "/always500.jpg": "HTTP 500 (after 3 attempts)",
            "/private.jpg": "HTTP 403",
            "/page.jpg": "not an image: Content-Type text/html",
            "/big.jpg": "too large: more than 100000 bytes",
            "/slow.jpg": "timed out",
        }
        for path, reason in cases.items():
            with pytest.raises(DownloadError) as info:
                downloader.fetch(f"{image_server}{path}")
            assert reason in info.value.reason, (path, info.value.reason)
        with pytest.raises(DownloadError, match="not an http"):
            downloader.fetch("file:///etc/passwd")
        downloader.use_browser_identity(
            [{"name": "session", "value": "abc", "domain": "127.0.0.1", "path": "/"}], "TestAgent/1")
        assert downloader.fetch(f"{image_server}/private.jpg")[:2] == b"\xff\xd8"
    finally:
        downloader.close()


def test_downloader_stops_retrying_at_the_deadline(image_server):
    downloader = ImageDownloader(timeout_s=5.0, max_bytes=100_000, attempts=50, backoff_s=0.2,
                                 concurrency=1, allow_private_hosts=True)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="HTTP 500"):
        downloader.fetch(f"{image_server}/always500.jpg", deadline=time.time() + 1.0)
    assert time.monotonic() - started < 4.0
    downloader.close()


def test_failure_meta_is_json(redis_client):
    publisher = ResultPublisher(redis_client, rank=2, done_ttl_s=60, failures_maxlen=1000)
    publisher.record_failure({"reason": "x"})
    (_, fields), = redis_client.xrange(redis_keys.crawl_failures())
    meta = json.loads(fields[b"meta"])
    assert meta["rank"] == 2 and meta["reason"] == "x" and meta["ts"] > 0


def test_cookies_are_kept_out_of_the_data_root_by_default(tmp_path, monkeypatch):
    from services.crawler.settings import CrawlerSettings

    monkeypatch.delenv("CNCLIP_CRAWLER_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    settings = CrawlerSettings(data_root=tmp_path / "data")
    assert settings.state_dir == tmp_path / "state" / "cnclip-crawler"
    assert not settings.state_dir.is_relative_to(settings.data_root)
