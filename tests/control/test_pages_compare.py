"""Runs compared on /status in headless Chromium: two training jobs ticked in the jobs list,
their validation recall and training loss drawn on one chart each, one line per run."""
from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from shared.jobs import JobStore
from shared.jobspec import PredictSpec, TrainSpec
from shared.messages import JobEvent
from tests.control.conftest import sign_in
from tests.control.pages import chart_points, click_when_stable, screenshot, wait_rendered

pytestmark = pytest.mark.browser


def _run(store: JobStore, name: str, steps: int, every: int, scale: float) -> str:
    record, _ = store.create(TrainSpec(train_data="d/train", val_data="d/valid", name=name))
    store.transition(record.id, "running")
    for step in range(1, steps + 1):
        store.append_event(record.id, JobEvent(type="train_step", data={
            "step": step, "total_steps": steps, "loss": scale * 3.0 / step, "lr": 1e-4, "samples_per_s": 100}))
        if step % every == 0:
            store.append_event(record.id, JobEvent(type="validation", data={
                "step": step, "r1": scale * step, "r5": 2 * step, "r10": 3 * step, "mr": scale * 2 * step}))
    store.transition(record.id, "succeeded")
    return record.id


def _drawn(driver, chart_id: str) -> dict:
    """What a chart draws: its lines' labels and values (x first)."""
    return driver.execute_script("""
        var c = window.statusCharts[arguments[0]];
        return c ? {labels: c.series.slice(1).map(function (s) { return s.label; }), data: c.data} : null;""",
                                 chart_id)


def test_two_runs_on_one_chart(control, redis_client, browser, tmp_path):
    store = JobStore(redis_client)
    base = _run(store, "muge-base", steps=20, every=10, scale=1.0)
    online = _run(store, "muge-online", steps=30, every=5, scale=1.5)
    prediction, _ = store.create(PredictSpec(mode="single", image_data="i", text_data="t", resume="m.pt"))

    sign_in(browser, control, f"/status?job={base}")
    wait_rendered(browser, base)
    assert not browser.find_element(By.ID, "compare-panel").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{prediction.id}"] input.compare-pick')

    click_when_stable(browser, f'tr[data-job="{base}"] input.compare-pick')
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "compare-hint").is_displayed())
    assert chart_points(browser, "chart-compare-recall") == []  # one run: nothing compared yet
    click_when_stable(browser, f'tr[data-job="{online}"] input.compare-pick')

    WebDriverWait(browser, 30).until(lambda d: chart_points(d, "chart-compare-recall") == [2, 6])
    assert chart_points(browser, "chart-compare-loss") == [20, 30]
    recall = _drawn(browser, "chart-compare-recall")
    assert recall["labels"] == ["muge-base", "muge-online"]
    assert recall["data"][0] == [5, 10, 15, 20, 25, 30]  # the union of both runs' validation steps
    assert recall["data"][1] == [None, 20, None, 40, None, None]  # MR of the first run where it has one
    assert recall["data"][2] == [15, 30, 45, 60, 75, 90]
    loss = _drawn(browser, "chart-compare-loss")
    assert loss["labels"] == ["muge-base", "muge-online"] and loss["data"][1][0] == pytest.approx(3.0)
    # Ticking a run does not open it: the selected job stays the one shown below.
    assert browser.find_element(By.ID, "status-root").get_attribute("data-rendered") == base
    screenshot(browser, tmp_path, "status-compare")

    Select(browser.find_element(By.ID, "compare-metric")).select_by_value("r1")
    WebDriverWait(browser, 10).until(lambda d: _drawn(d, "chart-compare-recall")["data"][2][0] == 7.5)
    assert browser.find_element(By.ID, "compare-recall-caption").text == "Validation R@1 (%)"
    # The ticks survive the list's refresh (every two seconds) and a run can be unticked.
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "return document.querySelectorAll('input.compare-pick:checked').length") == 2)
    click_when_stable(browser, f'tr[data-job="{online}"] input.compare-pick')
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "compare-hint").is_displayed())


def test_a_link_opens_the_comparison(control, redis_client, browser):
    store = JobStore(redis_client)
    first = _run(store, "a", steps=10, every=5, scale=1.0)
    second = _run(store, "b", steps=10, every=5, scale=2.0)
    sign_in(browser, control, f"/status?job={first}&compare={first},{second}")
    WebDriverWait(browser, 30).until(lambda d: chart_points(d, "chart-compare-recall") == [2, 2])
    assert _drawn(browser, "chart-compare-recall")["labels"] == ["a", "b"]
