"""The pages in headless Chromium: /login shows every rank's QR code and state and follows
changes live; /status draws its charts."""
from __future__ import annotations

import io
import math
import time

import pytest
import segno
import zxingcpp
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services.crawler.login import LoginStatePublisher
from shared.jobs import JobStore
from shared.jobspec import PredictSpec, TrainSpec
from shared.messages import JobEvent
from tests.control.conftest import sign_in

pytestmark = pytest.mark.browser


def qr_png(payload: str) -> bytes:
    out = io.BytesIO()
    segno.make(payload, error="m").save(out, kind="png", scale=6, border=4)
    return out.getvalue()


def card_states(driver) -> dict[int, str]:
    return {int(c.get_attribute("data-rank")): c.get_attribute("data-state")
            for c in driver.find_elements(By.CSS_SELECTOR, "#ranks .card")}


def test_login_page_shows_every_rank_and_follows_logins(control, redis_client, browser):
    publishers = {rank: LoginStatePublisher(redis_client, rank, "shop") for rank in range(4)}
    for rank in range(3):
        publishers[rank].publish("waiting_for_scan", qr_png=qr_png(f"cnclip-shop-login:token-{rank}"))
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
    assert not browser.find_elements(By.CSS_SELECTOR, "#rank-3 img.qr")
    assert "waiting for scan" in browser.find_element(By.CSS_SELECTOR, "#rank-0 .badge").text

    # A person scans the codes one after the other: each card turns green by itself.
    for rank in (1, 0, 2):
        started = time.monotonic()
        publishers[rank].publish("logged_in", drop_qr=True)
        wait.until(lambda d: card_states(d).get(rank) == "logged_in")
        assert time.monotonic() - started < 10
        assert "238, 250, 242" in browser.find_element(By.ID, f"rank-{rank}").value_of_css_property("background-color")
    assert not browser.find_elements(By.CSS_SELECTOR, "#ranks img.qr")

    # A rank that appears later, and a code that expires, show up without a reload.
    LoginStatePublisher(redis_client, 7, "shop").publish("waiting_for_scan", qr_png=qr_png("cnclip-shop-login:late"))
    publishers[2].publish("expired", detail="code expired")
    wait.until(lambda d: card_states(d).get(7) == "waiting_for_scan" and card_states(d).get(2) == "expired")
    assert [c.get_attribute("data-rank") for c in browser.find_elements(By.CSS_SELECTOR, "#ranks .card")] == \
        ["0", "1", "2", "3", "7"]


def _publish_training_history(store: JobStore, job_id: str) -> None:
    store.transition(job_id, "running")
    for step in range(1, 21):
        store.append_event(job_id, JobEvent(type="train_step", data={
            "step": step, "total_steps": 40, "epoch": 1, "loss": 3.0 / step, "lr": 1e-4 * step / 20,
            "samples_per_s": 100 + step}))
        if step % 5 == 0:
            store.append_event(job_id, JobEvent(type="validation", data={
                "step": step, "r1": step, "r5": 2 * step, "r10": 3 * step, "mr": 2 * step}))
            store.append_event(job_id, JobEvent(type="online", data={
                "split": "valid", "batch": step // 5, "queries": 8, "pairs": 7, "missing": {"late": 1},
                "dropped_leaked": 0, "wait_ms": 500.0}))
    store.update(job_id, progress={"step": 20, "total_steps": 40, "phase": "train", "loss": 0.15,
                                   "eta_s": 65, "validation": {"r1": 20, "r5": 40, "r10": 60, "mr": 40}})


def _polyline_points(driver, chart_id: str) -> list[int]:
    return [len(p.get_attribute("points").split())
            for p in driver.find_elements(By.CSS_SELECTOR, f"#{chart_id} svg polyline")]


def test_status_page_draws_its_charts(control, redis_client, browser):
    store = JobStore(redis_client)
    train, _ = store.create(TrainSpec(train_data="d/train", online="live"))
    _publish_training_history(store, train.id)
    ensemble, _ = store.create(PredictSpec(mode="ensemble", image_data="i", text_data="t",
                                           members=["resume/model-1.pt", "resume/model-2.pt"]))
    store.transition(ensemble.id, "running")
    for member, weight, progress in (("model-1.pt", 0.25, 1.0), ("model-2.pt", 0.75, 0.5)):
        store.append_event(ensemble.id, JobEvent(type="ensemble", data={
            "member": member, "weight": weight, "progress": progress}))
    store.append_event(ensemble.id, JobEvent(type="ensemble", data={
        "member": "fused", "metrics": {"r1": 41.0, "r5": 70.0, "r10": 80.0, "mr": 63.7}}))
    publisher = LoginStatePublisher(redis_client, 0, "shop")
    publisher.publish("logged_in")
    redis_client.hset("cnclip:crawler:0:stats", mapping={"pages": 12})

    sign_in(browser, control, f"/status?job={train.id}")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "status-root").get_attribute("data-rendered") == train.id)
    assert _polyline_points(browser, "chart-loss") == [20]
    assert _polyline_points(browser, "chart-lr") == [20]
    assert _polyline_points(browser, "chart-throughput") == [20]
    assert _polyline_points(browser, "chart-recall") == [4, 4, 4, 4]  # R@1, R@5, R@10, MR
    assert _polyline_points(browser, "chart-online") == [4, 4, 4, 4]
    assert _polyline_points(browser, "chart-online-wait") == [4]
    # Lower loss is drawn higher up the SVG's y axis inverted: the line falls left to right.
    points = browser.find_element(By.CSS_SELECTOR, "#chart-loss polyline").get_attribute("points").split()
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] < ys[-1]
    facts = browser.find_element(By.ID, "job-facts").text
    assert "20 / 40" in facts and "1m 5s" in facts
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-crawler svg rect.bar")
    assert "1 logged in" in browser.find_element(By.ID, "crawler-summary").text

    browser.find_element(By.CSS_SELECTOR, f"tr[data-job='{ensemble.id}']").click()
    wait.until(lambda d: d.find_element(By.ID, "status-root").get_attribute("data-rendered") == ensemble.id)
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-ensemble svg rect.bar")
    assert len(bars) == 4  # weight and progress of each member
    widths = [float(b.get_attribute("width")) for b in bars]
    assert widths[0] < widths[2]  # weight 0.25 drawn shorter than 0.75
    assert "fused r1: 41" in browser.find_element(By.ID, "ensemble-metrics").text

    # Live: new steps of the running job appear without a reload.
    browser.find_element(By.CSS_SELECTOR, f"tr[data-job='{train.id}']").click()
    store.append_event(train.id, JobEvent(type="train_step", data={"step": 21, "total_steps": 40, "loss": 0.1}))
    wait.until(lambda d: _polyline_points(d, "chart-loss") == [21])


def _crawler_chart_sizes(driver) -> dict[str, float]:
    """Rendered sizes, in CSS pixels, of the crawler pool chart's tallest label and bar."""
    return driver.execute_script("""
        var labels = document.querySelectorAll('#chart-crawler svg text');
        var bars = document.querySelectorAll('#chart-crawler svg rect.bar');
        function tallest(nodes) {
          return Math.max.apply(null, Array.from(nodes).map(function (n) { return n.getBoundingClientRect().height; }));
        }
        return {label: tallest(labels), bar: tallest(bars), bars: bars.length};""")


def _y_tick_labels(driver, chart_id: str) -> list[str]:
    """The y axis labels, bottom to top (right-aligned texts of the axes, less the x axis title)."""
    texts = driver.find_elements(By.CSS_SELECTOR, f"#{chart_id} svg .axes text[text-anchor='end']")
    ticks = [(t.rect["y"], t.text) for t in texts if t.text != "step"]
    return [label for _, label in sorted(ticks, reverse=True)]


def test_status_page_keeps_text_small_and_tick_labels_distinct(control, redis_client, browser):
    store = JobStore(redis_client)
    train, _ = store.create(TrainSpec(train_data="d/train"))
    store.transition(train.id, "running")
    for step in range(1, 21):  # a loss that barely moves: 3.48 down to 3.46
        store.append_event(train.id, JobEvent(type="train_step", data={
            "step": step, "total_steps": 40, "loss": 3.48 - 0.02 * (step - 1) / 19}))
    LoginStatePublisher(redis_client, 0, "shop").publish("waiting_for_scan")

    sign_in(browser, control, f"/status?job={train.id}")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "status-root").get_attribute("data-rendered") == train.id)
    wait.until(lambda d: _crawler_chart_sizes(d)["bars"] == 2)  # rank 0 and the queue depth

    labels = _y_tick_labels(browser, "chart-loss")
    assert len(labels) >= 3
    assert all(a != b for a, b in zip(labels, labels[1:])), labels
    values = [float(v) for v in labels]
    assert values == sorted(values) and values[0] <= 3.46 and values[-1] >= 3.48
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    assert len(steps) == 1  # evenly spaced, at one round step
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, nice) for nice in (1, 2, 2.5, 5)), step

    # The crawler pool chart spans the page; its text stays at the size of the other charts'.
    sizes = _crawler_chart_sizes(browser)
    assert sizes["label"] < 20 and sizes["bar"] < 20, sizes
    for rank in range(1, 32):
        LoginStatePublisher(redis_client, rank, "shop").publish("logged_in")
    wait.until(lambda d: _crawler_chart_sizes(d)["bars"] == 33)
    sizes = _crawler_chart_sizes(browser)
    assert 5 < sizes["label"] < 20 and sizes["bar"] < 20, sizes
