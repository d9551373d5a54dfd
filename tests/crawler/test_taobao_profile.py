"""The bundled ``taobao`` profile end to end against the shop's Taobao-like skin, with real
Chromium (headed under Xvfb, as the profile asks), Redis and Celery: QR login on a canvas,
search through the home page's box into a new tab, async cards, paging by button, thumbnails
rewritten to originals, typed input checked against the results page, and the soft prompts.
The slider reaching the operator, who passes it through control, is in
tests/control/test_operator_e2e.py."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import zxingcpp
from PIL import Image

from services.crawler.profile import PROFILES_DIR
from shared import redis_keys
from shared.image_validation import check_prepared
from tests.fixtures_crawler import CrawlClient, CrawlerWorker, log_in
from tests.fixtures_shop import REPO_ROOT, ShopServer, Skin

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QR_PREFIX = "cnclip-shop-login:"
FAST = {"CNCLIP_CRAWLER_MIN_INTERVAL_S": "0", "CNCLIP_CRAWLER_JITTER_S": "0",
        "CNCLIP_CRAWLER_LOGIN_POLL_S": "0.3"}


def decode_qr(png: bytes) -> str:
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert found, "no QR code in the published image"
    return found[0].text


def taobao_profile(tmp_path: Path, **pace: str) -> str:
    """The bundled taobao profile, with its [pace] (hours-long caps, minutes between pages,
    cooldowns) replaced for a test; everything else is the bundled text."""
    text = (PROFILES_DIR / "taobao.toml").read_text(encoding="utf-8")
    values = {"max_pages_per_hour": "0", "max_pages_per_day": "0", "search_cooldown_s": "0",
              "min_page_gap_s": "0", "cooldown_after_challenge_s": "0",
              "cooldown_after_human_timeout_s": "0", "cooldown_after_interstitial_s": "0", **pace}
    for key, value in values.items():
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert count == 1, key
    path = tmp_path / "taobao.toml"
    path.write_text(text.replace("human_wait_s = 300", "human_wait_s = 60"), encoding="utf-8")
    return str(path)


def crawl(client: CrawlClient, query: str, n: int, job: str, timeout: float = 120.0):
    request = client.submit(query, n_images=n, job_id=job, rank=0, deadline_s=timeout)
    result, = client.wait_results(request.reply_stream, 1, timeout=timeout + 10)
    return result


def test_taobao_profile_against_the_skin(crawler_workers, crawl_client, shop, skin, tmp_path):
    # Every other start of the shop names its classes differently: no fixed class in the profile.
    suffix = httpx.get(shop.url("/_test/taobao")).json()["class_suffix"]
    assert suffix not in (PROFILES_DIR / "taobao.toml").read_text()
    worker = crawler_workers(rank=0, mode="xvfb", profile=taobao_profile(tmp_path), env=FAST)

    # Login: the password view first; the crawler switches to the QR view and waits for the
    # canvas to be drawn before it takes the picture.
    state = crawl_client.wait_login_state(0, {"waiting_for_scan"})
    assert state.site == "taobao"
    token = shop.latest_token()
    assert decode_qr(crawl_client.qr_png(0)) == QR_PREFIX + token
    assert shop.count("tb_login") >= 1 and shop.count("tb_my") >= 1   # probed i.taobao.com
    assert shop.confirm(token).status_code == 200
    crawl_client.wait_login_state(0, {"logged_in"}, timeout=30)
    cookies = json.loads(next((worker.workdir / "state" / "cookies").glob("taobao-rank0.json")).read_text())
    assert {"unb", "_nk_", "tracknick"} <= {c["name"] for c in cookies["cookies"]}
    # The browser profile persists per rank.
    assert (worker.workdir / "state" / "chromium" / "taobao-rank0").is_dir()

    # More images than one page holds: the second page comes from the "next" button.
    shop.reset(sessions=False)
    result = crawl(crawl_client, "红色 T恤", 50, "tb1")
    assert result.status == "ok", result.missing
    assert len(result.images) == 50
    for image in result.images[:5]:
        check_prepared(image)
    # Thumbnails (WebP and AVIF) were rewritten to the original JPEG.
    assert all(url.endswith(".jpg") and "_360x360" not in url for url in result.image_urls)
    assert all(url.startswith(shop.base_url + "/g-search1.alicdn.com/") for url in result.image_urls)
    assert shop.count("tb_image_original") >= 50
    assert shop.count("tb_home") == 1            # typed into the home page's box...
    assert shop.count("tb_search") == 1          # ...one search page (opened in a new tab)...
    assert shop.count("tb_result_page") == 2     # ...and a second page by the button
    # Typed with key events: the box (which ignores a value set by script) searched the query,
    # not its placeholder hot word; no direct search URL, so no slider.
    assert shop.count("tb_search_query:红色 T恤") == 1
    assert shop.count("tb_direct_search") == 0 and shop.count("tb_punish") == 0
    assert crawl_client.redis.hget(redis_keys.crawler_stats(0), "wrong_query") is None

    # "访问太频繁": closed, and the cards behind it read; the same for the other wordings
    # of the dialog and a 关闭 button instead of its ×.
    skin.set(busy_dialog=1)
    result = crawl(crawl_client, "蓝色 杯子", 3, "tb2")
    assert result.status == "ok", result.missing
    assert skin.set()["busy_dialog"] == 0
    for text, close in (("操作太频繁", "button"), ("请求过于频繁", "x")):
        skin.set(busy_dialog=1, busy_text=text, busy_close=close)
        result = crawl(crawl_client, "蓝色 杯子", 3, f"tb2-{text}")
        assert result.status == "ok", (text, result.missing)
    assert shop.count("tb_busy_dialog") == 3 and shop.count("tb_punish") == 0

    # One-click re-login ("快速进入") on the login page: clicked, no QR code asked for.
    tokens = len(shop.tokens())
    skin.set(soft_reauth=1)
    result = crawl(crawl_client, "黑色 帽子", 3, "tb3")
    assert result.status == "ok", result.missing
    assert shop.count("tb_quick_login") == 1 and len(shop.tokens()) == tokens

    # A browser that says it is automated gets the slider: this one does not say so.
    skin.set(detect_webdriver=True)
    result = crawl(crawl_client, "白色 衬衫", 3, "tb4")
    assert result.status == "ok", result.missing
    skin.set(detect_webdriver=False)


def test_iframe_login_with_expiry_inside_the_frame(crawl_client, redis_url, tmp_path):
    shop = ShopServer(env={"CNCLIP_SHOP_QR_TOKEN_TTL_S": "3"}).start()
    worker = None
    try:
        skin = Skin(shop)
        skin.set(login_variant="iframe", qr_draw_delay_ms=300)
        # No check URL: the worker meets the login on the search page, as an iframe.
        profile = Path(taobao_profile(tmp_path))
        profile.write_text(profile.read_text().replace('check_url = "https://i.taobao.com/my_itaobao"\n', ""))
        worker = CrawlerWorker(redis_url, shop.base_url, tmp_path / "w", rank=0, mode="headless",
                               profile=str(profile), env=FAST).start(wait_for=("logged_in",))
        request = crawl_client.submit("红色 T恤", n_images=3, job_id="frame", rank=0, deadline_s=120)
        crawl_client.wait_login_state(0, {"waiting_for_scan"}, timeout=60)
        first = decode_qr(crawl_client.qr_png(0))
        # The code expires inside the frame after 3 s; the crawler refreshes it there.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            png = crawl_client.qr_png(0)
            if png and decode_qr(png) != first:
                break
            time.sleep(0.3)
        else:
            pytest.fail("the expired code in the login frame was never replaced")
        token = decode_qr(crawl_client.qr_png(0))[len(QR_PREFIX):]
        assert shop.confirm(token).status_code == 200
        result, = crawl_client.wait_results(request.reply_stream, 1, timeout=120)
        assert result.status == "ok", result.missing
        assert crawl_client.login_state(0).state == "logged_in"
    finally:
        leftovers = worker.stop() if worker is not None else []
        shop.stop()
    assert leftovers == []


def test_the_accounts_budget_holds_below_the_site_limit_and_survives_a_restart(
        crawler_workers, crawl_client, shop, skin, tmp_path):
    # The site shows its slider after 3 result pages; the profile allows the account 2 an hour.
    skin.set(page_cap=3, card_delay_ms=100)
    profile = taobao_profile(tmp_path, max_pages_per_hour="2")
    worker = crawler_workers(rank=0, mode="headless", profile=profile, env=FAST)
    log_in(crawl_client, shop, 0)
    assert crawl(crawl_client, "红色 T恤", 3, "cap1").status == "ok"
    assert crawl(crawl_client, "蓝色 杯子", 3, "cap2").status == "ok"
    capped = crawl(crawl_client, "黑色 帽子", 3, "cap3", timeout=30)
    assert capped.status == "failed"
    assert "the account's page budget (2 pages per 1 h)" in capped.missing[0].reason
    assert "leaves no time before the deadline" in capped.missing[0].reason
    # A restarted worker (same account, saved cookies) finds the count where it was.
    assert worker.stop() == []
    crawler_workers(rank=0, mode="headless", profile=profile, env=FAST, workdir=worker.workdir)
    crawl_client.wait_login_state(0, {"logged_in"}, timeout=60)
    again = crawl(crawl_client, "白色 衬衫", 3, "cap4", timeout=30)
    assert again.status == "failed" and "2 pages per 1 h" in again.missing[0].reason
    assert shop.count("tb_punish") == 0          # the site's limit was never reached
    assert shop.count("tb_result_page") == 2
    accounts = [k for k in crawl_client.redis.scan_iter(match="*crawler:account:*:pages")]
    assert len(accounts) == 1 and crawl_client.redis.zcard(accounts[0]) == 2


def test_check_profile_against_a_live_page(shop, skin):
    """The dry run reports what matches on the page, visible or not."""
    out = subprocess.run(
        [sys.executable, "-m", "services.crawler", "check-profile", "taobao", "--base-url",
         shop.base_url, "--wait", "1", "--against", shop.url("/s.taobao.com/search", q="红色 T恤")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "CNCLIP_CRAWLER_BROWSER_MODE": "headless"})
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert "/login.taobao.com/member/login.jhtml" in report["final_url"]
    assert report["page_kind"] == "login"
    selectors = report["selectors"]
    assert selectors["login.wall_selector"]["visible"] == 1
    # The hidden captcha of the password view is there, and not visible.
    assert selectors["interstitial.human_selector"]["matches"] >= 1
    assert selectors["interstitial.human_selector"]["visible"] == 0
    assert selectors["results.item"]["matches"] == 0

    bad = subprocess.run([sys.executable, "-m", "services.crawler", "check-profile", "taobao",
                          "--against", "not-a-url"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "http(s) URL" in bad.stderr
