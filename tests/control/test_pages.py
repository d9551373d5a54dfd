"""The pages in headless Chromium: /login shows every rank's QR code, site and expiry and follows
changes live; /status shows the crawler pool per rank and cancels a job. (Each kind of job's
panels: test_pages_jobs.py.)"""
from __future__ import annotations

import io
import json
import time

import pytest
import segno
import zxingcpp
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services.crawler.login import LoginStatePublisher
from shared.jobs import JobStore
from shared.jobspec import TrainSpec
from shared import redis_keys
from tests.control.conftest import sign_in
from tests.control.pages import click_when_stable, screenshot, table_rows, wait_rendered

pytestmark = pytest.mark.browser


def qr_png(payload: str) -> bytes:
    out = io.BytesIO()
    segno.make(payload, error="m").save(out, kind="png", scale=6, border=4)
    return out.getvalue()


def card_states(driver) -> dict[int, str]:
    return {int(c.get_attribute("data-rank")): c.get_attribute("data-state")
            for c in driver.find_elements(By.CSS_SELECTOR, "#ranks .card")}


def live_publisher(client, rank: int, *args):
    """A rank's publisher whose worker is alive: it holds the rank's claim (its heartbeat), as
    a running crawler does; a rank without one shows offline."""
    client.set(redis_keys.crawler_rank_claim(rank), f"worker-{rank}", ex=600)
    return LoginStatePublisher(client, rank, *args)


def test_login_page_shows_every_rank_and_follows_logins(control, redis_client, browser, tmp_path):
    publishers = {rank: live_publisher(redis_client, rank, "shop", "http://127.0.0.1:8765")
                  for rank in range(4)}
    published = time.monotonic()
    for rank in range(3):
        publishers[rank].publish("waiting_for_scan", qr_png=qr_png(f"cnclip-shop-login:token-{rank}"),
                                 qr_lifetime_s=100 + 60 * rank)
    publishers[3].publish("logged_in")

    sign_in(browser, control, "/login")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: card_states(d) == {0: "waiting_for_scan", 1: "waiting_for_scan",
                                            2: "waiting_for_scan", 3: "logged_in"})
    # Every waiting rank shows its own code, loaded through the authenticated route.
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                             for img in d.find_elements(By.CSS_SELECTOR, "#ranks img.qr"))
               and len(d.find_elements(By.CSS_SELECTOR, "#ranks img.qr")) == 3)
    for rank in range(3):
        img = browser.find_element(By.CSS_SELECTOR, f"#rank-{rank} img.qr")
        shot = Image.open(io.BytesIO(img.screenshot_as_png))
        decoded = [r.text for r in zxingcpp.read_barcodes(shot)]
        assert decoded == [f"cnclip-shop-login:token-{rank}"]
        # Big enough for a phone across a desk: at least 300 CSS pixels a side.
        assert img.size["width"] >= 300 and img.size["height"] >= 300
    assert not browser.find_elements(By.CSS_SELECTOR, "#rank-3 img.qr")
    assert "waiting for scan" in browser.find_element(By.CSS_SELECTOR, "#rank-0 .badge").text
    # The site each rank logs into, and how long its code lasts, counting down by itself.
    site = browser.find_element(By.CSS_SELECTOR, "#rank-0 .site")
    assert site.text == "logs into shop (127.0.0.1:8765)"
    assert site.find_element(By.TAG_NAME, "a").get_attribute("href") == "http://127.0.0.1:8765/"

    def seconds_left(rank):
        return int(browser.find_element(By.CSS_SELECTOR, f"#rank-{rank} .expiry").get_attribute("data-seconds-left"))
    first = {rank: seconds_left(rank) for rank in range(3)}
    # What is left is the code's lifetime less the time since it was published (measured here,
    # so a slow machine does not fail it), never more than the lifetime.
    elapsed = time.monotonic() - published
    for rank, lifetime in ((0, 100), (1, 160), (2, 220)):
        assert lifetime - elapsed - 1 <= first[rank] <= lifetime, (rank, first, elapsed)
    assert browser.find_element(By.CSS_SELECTOR, "#rank-1 .expiry").text.startswith("code valid for 2:")
    wait.until(lambda d: seconds_left(0) <= first[0] - 2)
    assert browser.find_element(By.CSS_SELECTOR, "#rank-3 .expiry").text == ""
    screenshot(browser, tmp_path, "login")

    # A person scans the codes one after the other: each card turns green by itself.
    for rank in (1, 0, 2):
        started = time.monotonic()
        publishers[rank].publish("logged_in", drop_qr=True)
        wait.until(lambda d: card_states(d).get(rank) == "logged_in")
        assert time.monotonic() - started < 10
        assert "238, 250, 242" in browser.find_element(By.ID, f"rank-{rank}").value_of_css_property("background-color")
    assert not browser.find_elements(By.CSS_SELECTOR, "#ranks img.qr")

    # A rank that appears later, and a code that expires, show up without a reload.
    live_publisher(redis_client, 7, "shop").publish("waiting_for_scan", qr_png=qr_png("cnclip-shop-login:late"))
    publishers[2].publish("expired", detail="code expired")
    wait.until(lambda d: card_states(d).get(7) == "waiting_for_scan" and card_states(d).get(2) == "expired")
    assert [c.get_attribute("data-rank") for c in browser.find_elements(By.CSS_SELECTOR, "#ranks .card")] == \
        ["0", "1", "2", "3", "7"]


def test_status_page_shows_the_crawler_pool_per_rank(control, redis_client, browser, tmp_path):
    live_publisher(redis_client, 0, "shop").publish("logged_in")
    live_publisher(redis_client, 1, "shop").publish("waiting_for_scan", qr_png=qr_png("cnclip-shop-login:x"))
    redis_client.hset(redis_keys.crawler_stats(0), mapping={
        "pages": 40, "queries": 12, "images": 55, "failures": 3, "last_seen": time.time(),
        "current": "req-1", "current_query": "红色条纹T恤"})
    redis_client.hset(redis_keys.crawler_stats(1), mapping={"pages": 0, "failures": 0})
    for reason, query in (("timeout", "蓝色鞋"), ("not_an_image", "紫色格子裙")):
        redis_client.xadd(redis_keys.crawl_failures(), {"meta": json.dumps(
            {"job_id": "j", "request_id": "r", "split": "valid", "query": query, "url": "http://x/1.jpg",
             "reason": reason, "rank": 0, "ts": time.time()}, ensure_ascii=False)})
    store = JobStore(redis_client)
    job, _ = store.create(TrainSpec(train_data="d/train", name="crawl-run"))

    sign_in(browser, control, f"/status?job={job.id}")
    wait_rendered(browser, job.id)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: len(table_rows(d, "crawler-table")) == 2)
    rank0, rank1 = table_rows(browser, "crawler-table")
    # Rank, login, pages/min, pages, failures, last failure, crawling now.
    assert rank0[:2] == ["0", "logged in"] and rank0[3:7] == ["40", "3", "not_an_image", "红色条纹T恤"]
    assert rank1[:2] == ["1", "waiting for scan scan its QR"] and rank1[4:7] == ["0", "-", "idle"]
    links = browser.execute_script("""return Array.from(document.querySelectorAll('#crawler-table a.qr-link'))
        .map(function (a) { return [a.closest('tr').dataset.rank, a.href]; });""")
    assert [(rank, href.split("/", 3)[-1]) for rank, href in links] == [("1", "login#rank-1")]
    assert "2 ranks \u00b7 1 logged in" in browser.find_element(By.ID, "crawler-summary").text
    # Pages per minute follow the counter's growth between reads.
    redis_client.hset(redis_keys.crawler_stats(0), "pages", 400)
    wait.until(lambda d: table_rows(d, "crawler-table")[0][2] not in ("-", "0"))
    assert float(table_rows(browser, "crawler-table")[0][2]) > 0
    screenshot(browser, tmp_path, "status-crawler-pool")

    # The link leads to that rank's code on /login.
    click_when_stable(browser, "#crawler-table tr[data-rank='1'] a.qr-link")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rank-1 img.qr"))
    assert browser.current_url.endswith("/login#rank-1")


def test_cancel_button_cancels_the_job(control, redis_client, browser):
    store = JobStore(redis_client)
    job, _ = store.create(TrainSpec(train_data="d/train", name="to-cancel"))
    sign_in(browser, control, f"/status?job={job.id}")
    wait_rendered(browser, job.id, state="queued")
    browser.find_element(By.ID, "cancel-job").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "cancel-result").text == "Cancel requested.")
    assert store.get(job.id).state == "cancelled"
    wait_rendered(browser, job.id, state="cancelled")
    assert not browser.find_element(By.ID, "cancel-job").is_displayed()
