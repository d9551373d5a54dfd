"""The operator in the loop, end to end with real Chromium on both sides: a crawler worker meets
the Taobao skin's slider (which only a hand's drag along its track passes, and which no test
switch lifts), /login shows the rank as needing you with a live view, and a second browser,
signed in as the operator, drags the slider there; the drag is relayed into the crawler's
browser as trusted input and the crawl completes with pictures. Each other form of the slider
reaches the operator the same way, through control's API."""
from __future__ import annotations

import time

import httpx
import pytest
import redis as redis_lib
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from shared import redis_keys
from tests.control.conftest import sign_in
from tests.crawler.test_taobao_profile import FAST, taobao_profile
from tests.fixtures_crawler import log_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Where the knob sits, from the skin's layout (punish.html, search.html): the track is 300 px
# wide, 20 px below the top of the punish page and centred in it, the knob 40x34 at its left.
# In the dialog form the punish page is a 400x300 frame; the live view shows the dialog with a
# 24 px margin, so the knob's centre is at (24 + 50 + 20, 24 + 20 + 17) in the view.
DIALOG_KNOB = (94, 61)
TRACK = 300


def test_the_operator_drags_the_slider_through_the_control_page(
        control, crawler_workers, crawl_client, shop, skin, browser, tmp_path):
    crawler_workers(rank=0, mode="headless", profile=taobao_profile(tmp_path), env=FAST)
    log_in(crawl_client, shop, 0)
    skin.set(punish=1)
    request = crawl_client.submit("绿色 裙子", n_images=3, job_id="op1", rank=0, deadline_s=150)
    waiting = crawl_client.wait_login_state(0, {"needs_human"}, timeout=90)
    assert "slider" in waiting.detail and "/login" in waiting.detail
    pages_while_waiting = shop.count("tb_result_page")

    # /status's crawler pool says the rank needs you, and links to its live view.
    sign_in(browser, control, "/status")
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#crawler-table tr[data-rank='0']"))[0]
    wait.until(lambda d: "needs you" in row.text)
    assert "pass its check" in row.text
    browser.get(control.base_url + "/login")
    view = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#needs-you-0 .live-view"))[0]
    assert "needs you" in browser.find_element(By.CSS_SELECTOR, "#needs-you-0 h2").text
    # A live view: frames keep coming, a few a second, cut to the check's region.
    wait.until(lambda d: int(d.find_element(By.ID, "needs-you-0").get_attribute("data-frames") or 0) >= 3)
    first = int(browser.find_element(By.ID, "needs-you-0").get_attribute("data-frames"))
    time.sleep(2.0)
    frames = int(browser.find_element(By.ID, "needs-you-0").get_attribute("data-frames")) - first
    assert 3 <= frames <= 20, frames
    # The 400x300 dialog with its margins (and the view's border), not the whole page.
    assert abs(view.size["width"] - 450) <= 2 and abs(view.size["height"] - 350) <= 2, view.size
    assert shop.count("tb_result_page") == pages_while_waiting       # waiting, not reloading

    # The operator drags the knob to the end of the track, as a person does: press, a path of
    # small moves, release.
    offset_x = 1 + DIALOG_KNOB[0] - view.size["width"] / 2
    offset_y = 1 + DIALOG_KNOB[1] - view.size["height"] / 2
    actions = ActionChains(browser, duration=60)
    actions.move_to_element_with_offset(view, offset_x, offset_y).click_and_hold()
    for _ in range(14):
        actions.move_by_offset(20, 0)
    actions.release().perform()

    result, = crawl_client.wait_results(request.reply_stream, 1, timeout=120)
    assert result.status == "ok", result.missing
    assert len(result.images) == 3
    assert shop.count("tb_punish_solved") == 1 and shop.count("tb_punish_refused") == 0
    assert crawl_client.login_state(0).state == "logged_in"
    # Nothing of the page outlives the check: no frame, no input, no view on the page.
    assert not crawl_client.redis.exists(redis_keys.crawler_live(0))
    assert not crawl_client.redis.exists(redis_keys.crawler_operator_input(0))
    wait.until(lambda d: not d.find_elements(By.ID, "needs-you-0"))
    frame = httpx.get(control.base_url + "/api/operator/0/frame.jpg", headers=control.headers)
    assert frame.status_code == 404


def drag_through_the_api(control, rank: int, start: tuple[float, float], distance: float) -> httpx.Response:
    """The operator's drag as the page sends it: a press, moves in small batches, a release."""
    live = None
    for _ in range(100):
        views = httpx.get(control.base_url + "/api/operator/live", headers=control.headers).json()
        live = next((v["live"] for v in views if v["rank"] == rank and v["live"]), None)
        if live:
            break
        time.sleep(0.1)
    assert live, "no live view"
    x, y = start

    def send(*events):
        response = httpx.post(control.base_url + f"/api/operator/{rank}/input", headers=control.headers,
                              json={"challenge": live["challenge"], "events": list(events)})
        response.raise_for_status()
        return response

    send({"kind": "mouseMoved", "x": x, "y": y}, {"kind": "mousePressed", "x": x, "y": y})
    for step in range(1, 13):
        time.sleep(0.04)
        send({"kind": "mouseMoved", "x": x + distance * step / 12, "y": y + (step % 2)})
    return send({"kind": "mouseReleased", "x": x + distance, "y": y})


@pytest.mark.parametrize("form", ["page", "inline", "unrendered"])
def test_every_form_of_the_slider_reaches_the_operator(
        form, control, crawler_workers, crawl_client, shop, skin, tmp_path):
    crawler_workers(rank=0, mode="headless", profile=taobao_profile(tmp_path), env=FAST)
    log_in(crawl_client, shop, 0)
    skin.set(punish=1, challenge=form)
    request = crawl_client.submit("绿色 裙子", n_images=3, job_id=f"op-{form}", rank=0, deadline_s=150)
    crawl_client.wait_login_state(0, {"needs_human"}, timeout=90)
    punished = shop.count("tb_punish") + shop.count("tb_punish_page")
    # The top-level punish page: its slider is centred in the viewport's width, 20 px down.
    live = None
    for _ in range(100):
        views = httpx.get(control.base_url + "/api/operator/live", headers=control.headers).json()
        live = views[0]["live"] if views and views[0]["live"] else None
        if live:
            break
        time.sleep(0.1)
    assert live is not None and live["region"][1] == 0     # the check's region comes first
    if form == "unrendered":
        time.sleep(3.5)     # the knob is drawn 3 s after the page
    time.sleep(1.0)
    assert shop.count("tb_punish") + shop.count("tb_punish_page") == punished   # no reload loop
    knob = ((live["width"] - TRACK) / 2 + 20, 20 + 17)
    # A script's input is refused by the API (bad events) and by the slider (not a hand's).
    bad = httpx.post(control.base_url + "/api/operator/0/input", headers=control.headers,
                     json={"challenge": live["challenge"], "events": [{"kind": "eval", "x": 1}]})
    assert bad.status_code == 422
    stale = httpx.post(control.base_url + "/api/operator/0/input", headers=control.headers,
                       json={"challenge": "0" * 16, "events": [{"kind": "mouseMoved"}]})
    assert stale.status_code == 409
    drag_through_the_api(control, 0, knob, TRACK)
    result, = crawl_client.wait_results(request.reply_stream, 1, timeout=120)
    assert result.status == "ok", result.missing
    assert shop.count("tb_punish_solved") == 1


def test_the_operator_routes_need_a_signed_in_operator_from_this_origin(control, redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    client.hset(redis_keys.crawler_live(5), mapping={
        "jpeg": b"\xff\xd8frame", "meta": '{"challenge": "c1", "width": 800, "height": 600, "region": [0, 0, 10, 10]}'})
    base = control.base_url
    assert httpx.get(base + "/api/operator/live").status_code == 401
    assert httpx.get(base + "/api/operator/5/frame.jpg").status_code == 401
    body = {"challenge": "c1", "events": [{"kind": "mouseMoved", "x": 1, "y": 2}]}
    assert httpx.post(base + "/api/operator/5/input", json=body).status_code == 401
    frame = httpx.get(base + "/api/operator/5/frame.jpg", headers=control.headers)
    assert frame.status_code == 200 and frame.headers["cache-control"].startswith("no-store")
    assert "frame-ancestors 'none'" in frame.headers["content-security-policy"]
    # The page cookie alone, from another origin: refused before it reaches the browser.
    with httpx.Client(base_url=base) as page:
        page.post("/auth/session", data={"token": control.token, "next": "/login"})
        assert page.get("/api/operator/5/frame.jpg").status_code == 200
        cross = page.post("/api/operator/5/input", json=body, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
        same = page.post("/api/operator/5/input", json=body, headers={"Origin": base})
        assert same.status_code == 200 and same.json() == {"queued": 1}
    queued = client.lrange(redis_keys.crawler_operator_input(5), 0, -1)
    assert len(queued) == 1 and b'"c1"' in queued[0]
    assert 0 < client.ttl(redis_keys.crawler_operator_input(5)) <= 30
    too_many = {"challenge": "c1", "events": [{"kind": "mouseMoved"}] * 201}
    assert httpx.post(base + "/api/operator/5/input", json=too_many, headers=control.headers).status_code == 422
    assert client.get(redis_keys.crawler_login_watched()) is None
    httpx.get(base + "/api/operator/live", headers=control.headers).raise_for_status()
    assert client.get(redis_keys.crawler_login_watched()) == b"1"
    client.close()
