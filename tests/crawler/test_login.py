"""QR login per rank with headed Chromium under Xvfb: the QR in Redis decodes to the shop's
token, a confirmed scan logs the rank in, a restarted worker reuses its cookies, expired codes
are replaced, and one login can be shared by several ranks."""
from __future__ import annotations

import io
import stat
import time

import pytest
import zxingcpp
from PIL import Image

from shared import redis_keys
from shared.image_validation import check_prepared
from tests.fixtures_crawler import CrawlClient, CrawlerWorker
from tests.fixtures_shop import ShopServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QR_PREFIX = "cnclip-shop-login:"


def decode_qr(png: bytes) -> str:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    found = zxingcpp.read_barcodes(image)
    assert found, "no QR code found in the published image"
    return found[0].text


@pytest.fixture()
def client(redis_url):
    client = CrawlClient(redis_url)
    yield client
    client.close()


@pytest.fixture()
def short_qr_shop():
    """A shop whose QR codes expire after 3 s."""
    server = ShopServer(env={"CNCLIP_SHOP_QR_TOKEN_TTL_S": "3"}).start()
    yield server
    server.stop()


def test_qr_login_under_xvfb_then_restart_reuses_cookies(redis_url, shop, client, tmp_path):
    worker = CrawlerWorker(redis_url, shop.base_url, tmp_path / "w", rank=3, mode="xvfb").start()
    try:
        assert any(p.name() == "Xvfb" for p in worker.processes())
        state = client.wait_login_state(3, {"waiting_for_scan"})
        assert state.site == "shop" and state.qr_updated_at is not None
        assert int(3) in {int(r) for r in client.redis.smembers(redis_keys.crawler_ranks())}
        token = shop.latest_token()
        assert decode_qr(client.qr_png(3)) == QR_PREFIX + token

        pubsub = client.redis.pubsub()
        pubsub.subscribe(redis_keys.crawler_login_channel())
        assert shop.confirm(token).status_code == 200
        logged_in = client.wait_login_state(3, {"logged_in"}, timeout=30)
        assert logged_in.since >= state.since
        assert client.qr_png(3) is None          # no stale code is left to scan
        announced = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and b"3" not in announced:
            message = pubsub.get_message(timeout=0.5)
            if message and message["type"] == "message":
                announced.append(message["data"])
        pubsub.close()
        assert b"3" in announced

        request = client.submit("红色 T恤", n_images=3, job_id="xvfb", rank=3)
        result, = client.wait_results(request.reply_stream, 1)
        assert result.status == "ok", result.missing
        for image in result.images:
            check_prepared(image)

        cookie_files = list((tmp_path / "w" / "state" / "cookies").glob("*.json"))
        assert [f.name for f in cookie_files] == ["shop-rank3.json"]
        assert stat.S_IMODE(cookie_files[0].stat().st_mode) == 0o600
        # Cookies are private to the crawler: nothing in Redis holds the session id.
        session_id = [c for c in __import__("json").loads(cookie_files[0].read_text())["cookies"]
                      if c["name"] == "cnclip_shop_session"][0]["value"]
        for key in client.redis.scan_iter():
            if client.redis.type(key) == b"string":
                assert session_id.encode() not in client.redis.get(key)
            elif client.redis.type(key) == b"hash":
                assert session_id.encode() not in b"".join(client.redis.hvals(key))
    finally:
        assert worker.stop() == []

    tokens_before = len(shop.tokens())
    again = CrawlerWorker(redis_url, shop.base_url, tmp_path / "w", rank=3, mode="xvfb")
    started = time.time()
    again.start(wait_for=("logged_in",))
    try:
        assert client.wait_login_state(3, {"logged_in"}, after=started).state == "logged_in"
        assert len(shop.tokens()) == tokens_before   # no new QR code was asked for
        assert client.qr_png(3) is None
        request = client.submit("蓝色 杯子", n_images=2, job_id="xvfb2", rank=3)
        result, = client.wait_results(request.reply_stream, 1)
        assert result.status == "ok"
    finally:
        assert again.stop() == []


def test_expired_qr_codes_are_replaced(redis_url, short_qr_shop, client, tmp_path):
    worker = CrawlerWorker(redis_url, short_qr_shop.base_url, tmp_path / "w", rank=0,
                           mode="headless", env={"CNCLIP_CRAWLER_LOGIN_POLL_S": "0.3"}).start()
    try:
        first = client.wait_login_state(0, {"waiting_for_scan"})
        first_token = decode_qr(client.qr_png(0))
        # The page marks the code expired after 3 s; the rank publishes a fresh one.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = client.login_state(0)
            png = client.qr_png(0)
            if state.state == "waiting_for_scan" and png and decode_qr(png) != first_token:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no new QR code after the first expired")
        assert state.qr_updated_at > first.qr_updated_at
        assert short_qr_shop.confirm(first_token.removeprefix(QR_PREFIX)).status_code == 410
        new_token = decode_qr(png).removeprefix(QR_PREFIX)
        assert short_qr_shop.confirm(new_token).status_code == 200
        client.wait_login_state(0, {"logged_in"}, timeout=30)
    finally:
        assert worker.stop() == []


def test_an_idle_rank_stops_refreshing_its_code_until_login_is_opened(
        redis_url, short_qr_shop, client, tmp_path):
    from services.crawler.profile import PROFILES_DIR

    profile = tmp_path / "shop.toml"
    profile.write_text((PROFILES_DIR / "shop.toml").read_text().replace(
        "qr_max_age_s = 115", "qr_max_age_s = 115\nidle_qr_refreshes = 1"))
    worker = CrawlerWorker(redis_url, short_qr_shop.base_url, tmp_path / "w", rank=0,
                           mode="headless", profile=str(profile),
                           env={"CNCLIP_CRAWLER_LOGIN_POLL_S": "0.3"}).start()
    try:
        client.wait_login_state(0, {"waiting_for_scan"})
        tokens = len(short_qr_shop.tokens())
        # Nobody watches: one new code after the first expired, then none.
        stopped = client.wait_login_state(0, {"expired"}, timeout=40)
        deadline = time.monotonic() + 30
        while "open /login" not in stopped.detail and time.monotonic() < deadline:
            time.sleep(0.3)
            stopped = client.login_state(0)
        assert "open /login" in stopped.detail, stopped
        assert client.qr_png(0) is None
        taken = len(short_qr_shop.tokens())
        assert taken <= tokens + 2
        time.sleep(5)
        assert len(short_qr_shop.tokens()) == taken         # no more codes while unwatched
        # Someone opens /login (its page says so through Redis): a fresh code at once.
        client.redis.set(redis_keys.crawler_login_watched(), "1", ex=20)
        fresh = client.wait_login_state(0, {"waiting_for_scan"}, timeout=20)
        token = decode_qr(client.qr_png(0)).removeprefix(QR_PREFIX)
        assert fresh.updated_at > stopped.updated_at
        assert short_qr_shop.confirm(token).status_code == 200
        client.wait_login_state(0, {"logged_in"}, timeout=30)
    finally:
        assert worker.stop() == []


def test_one_login_shared_by_two_ranks(redis_url, shop, client, tmp_path):
    shared = {"CNCLIP_CRAWLER_SHARE_LOGIN": "true", "CNCLIP_CRAWLER_DATA_DIR": str(tmp_path / "common")}
    first = CrawlerWorker(redis_url, shop.base_url, tmp_path / "a", rank=0, env=shared).start()
    second = CrawlerWorker(redis_url, shop.base_url, tmp_path / "b", rank=1, env=shared).start()
    try:
        client.wait_login_state(0, {"waiting_for_scan"})
        client.wait_login_state(1, {"waiting_for_scan"})
        tokens = [decode_qr(client.qr_png(r)).removeprefix(QR_PREFIX) for r in (0, 1)]
        assert tokens[0] != tokens[1]
        assert shop.confirm(tokens[0]).status_code == 200      # one scan, for rank 0
        client.wait_login_state(0, {"logged_in"})
        client.wait_login_state(1, {"logged_in"}, timeout=30)   # rank 1 picks up the login
        request = client.submit("绿色 帽子", n_images=2, job_id="shared", rank=1)
        result, = client.wait_results(request.reply_stream, 1)
        assert result.status == "ok"
        files = list((tmp_path / "common" / "cookies").glob("*.json"))
        assert [f.name for f in files] == ["shop-shared.json"]
    finally:
        assert first.stop() == [] and second.stop() == []
