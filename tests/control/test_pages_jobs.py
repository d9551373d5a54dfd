"""/status in headless Chromium, one test per kind of job: each shows its own panels and the
figures a person needs (run names, member metrics next to the fused row, online figures).
Events are written into each job's stream the way the trainer writes them; screenshots go to
the test's output."""
from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from shared.jobs import JobStore
from shared.jobspec import PredictSpec, TrainSpec
from shared.messages import JobEvent
from tests.control.conftest import sign_in
from tests.control.pages import (chart_has_canvas, click_when_stable, chart_points, screenshot, table_rows, visible_panels,
                                 wait_rendered)

pytestmark = pytest.mark.browser
CHECKPOINT = "experiments/{}/checkpoints/epoch_latest.pt"


def emit(store: JobStore, job_id: str, kind: str, ts: float | None = None, **data) -> None:
    event = JobEvent(type=kind, data=data) if ts is None else JobEvent(type=kind, data=data, ts=ts)
    store.append_event(job_id, event)


def _training_history(store: JobStore, job_id: str) -> None:
    store.transition(job_id, "running")
    emit(store, job_id, "phase", name="setup")
    for step in range(1, 21):
        emit(store, job_id, "train_step", step=step, total_steps=40, epoch=1, loss=3.0 / step,
             lr=1e-4 * step / 20, samples_per_s=100 + step)
        if step % 10 == 0:
            emit(store, job_id, "validation", step=step, epoch=step // 10, r1=step, r5=2 * step, r10=3 * step, mr=2 * step)
            for batch in range(3):  # one online step per validation batch
                emit(store, job_id, "online", split="valid", batch=batch, queries=8, pairs=6 + batch % 2,
                     missing={"timeout": 1, "leakage": 1 - batch % 2}, wait_ms=120.0 + batch, loss=1.5)
            emit(store, job_id, "online_pass", split="valid", epoch=step // 10, pass_index=step // 10,
                 queries=24, pairs=19, missing={"timeout": 3, "leakage": 2}, steps=3, dropped_disagreeing=12,
                 replay_pairs=57, skipped_active=10, wall_s=4.5)
    store.update(job_id, progress={"step": 20, "total_steps": 40, "epoch": 1, "phase": "train", "loss": 0.15,
                                   "eta_s": 65, "validation": {"r1": 20, "r5": 40, "r10": 60, "mr": 40}})


def test_training_job(control, redis_client, browser, tmp_path):
    store = JobStore(redis_client)
    train, _ = store.create(TrainSpec(train_data="d/train", val_data="d/valid", name="muge-base", online="live"))
    _training_history(store, train.id)

    # The job's own address opens it directly.
    sign_in(browser, control, f"/status?job={train.id}")
    wait_rendered(browser, train.id)
    assert visible_panels(browser) == {"panel-training", "panel-online"}
    assert chart_points(browser, "chart-loss") == [20]
    assert chart_points(browser, "chart-lr") == [20]
    assert chart_points(browser, "chart-throughput") == [20]
    assert chart_points(browser, "chart-recall") == [2, 2, 2, 2]  # R@1, R@5, R@10, MR
    assert chart_points(browser, "chart-online-pairs") == [6, 6, 6]  # queries, pairs, missing
    assert chart_points(browser, "chart-online-wait") == [6]
    assert chart_points(browser, "chart-online-loss") == [6]
    assert all(chart_has_canvas(browser, c) for c in ("chart-loss", "chart-recall", "chart-online-pairs"))
    # The loss falls left to right: its last point is drawn lower on the canvas than its first.
    first_y, last_y = browser.execute_script("""
        var u = window.statusCharts['chart-loss'];
        var ys = u.data[1];
        return [u.valToPos(ys[0], 'y'), u.valToPos(ys[ys.length - 1], 'y')];""")
    assert first_y < last_y
    # A learning rate of order 1e-5 gets tick labels that tell the ticks apart (never all "0").
    lr_ticks = browser.execute_script("return window.statusCharts['chart-lr'].axes[1]._values")
    assert len(lr_ticks) >= 3 and len(set(lr_ticks)) == len(lr_ticks), lr_ticks
    assert [float(t) for t in lr_ticks] == sorted(float(t) for t in lr_ticks)
    # Online figures: missing images by reason over the whole run, and one row per pass.
    assert browser.find_element(By.ID, "online-missing").text == "Missing images by reason: timeout 6, leakage 4"
    # Steps taken, pictures dropped as disagreeing, offline pairs replayed.
    assert table_rows(browser, "online-passes") == [["valid", "1", "1", "24", "19", "5", "3", "12", "57", "10", "4.5s"],
                                                    ["valid", "2", "2", "24", "19", "5", "3", "12", "57", "10", "4.5s"]]
    facts = browser.find_element(By.ID, "job-facts").text
    assert "20 / 40" in facts and "ETA: 1m 5s" in facts and "Online: live" in facts
    assert browser.find_element(By.ID, "job-title").text == "muge-base \u00b7 training"
    row = table_rows(browser, "jobs-table")[0]
    assert row[:4] == ["muge-base", "training", "-", "live"]
    assert row[4] != "-" and row[5].endswith("s") and row[6] == "running"
    screenshot(browser, tmp_path, "status-train")

    # Live: a new step appears without a reload.
    emit(store, train.id, "train_step", step=21, total_steps=40, loss=0.1)
    WebDriverWait(browser, 20).until(lambda d: chart_points(d, "chart-loss") == [21])


def test_single_prediction(control, redis_client, browser, tmp_path):
    store = JobStore(redis_client)
    job, _ = store.create(PredictSpec(mode="single", image_data="i", text_data="t",
                                      resume=CHECKPOINT.format("muge-base")))
    store.transition(job.id, "running")
    t0 = time.time() - 100
    emit(store, job.id, "phase", ts=t0, name="predict:single")
    emit(store, job.id, "phase", ts=t0 + 12.0, name="encode images")
    emit(store, job.id, "phase", ts=t0 + 72.0, name="rank")
    emit(store, job.id, "result", ts=t0 + 80.0, paths=["experiments/results/x.jsonl"],
         metrics={"r1": 41.5, "r5": 70.25, "r10": 80.0, "mr": 63.9167, "num_queries": 60})
    store.transition(job.id, "succeeded")

    sign_in(browser, control, f"/status?job={job.id}")
    wait_rendered(browser, job.id, state="succeeded")
    # No training charts for a prediction: its phases with their durations, and its metrics.
    assert visible_panels(browser) == {"panel-phases", "panel-metrics"}
    phases = table_rows(browser, "phases-table")
    assert [(p[0], p[2]) for p in phases] == [("predict:single", "12s"), ("encode images", "1m 0s"), ("rank", "8s")]
    assert table_rows(browser, "metrics-table") == [["result", "41.5", "70.25", "80", "63.92"]]
    assert browser.find_element(By.ID, "job-title").text == "muge-base \u00b7 prediction"
    assert table_rows(browser, "jobs-table")[0][:4] == ["muge-base", "prediction", "single", "off"]
    assert not browser.find_element(By.ID, "cancel-job").is_displayed()  # it has ended
    screenshot(browser, tmp_path, "status-single")


def _ensemble_history(store: JobStore, job_id: str) -> None:
    """The events `cnclip predict --mode ensemble --fit-weights-on ...` writes, in its order."""
    store.transition(job_id, "running")
    runs = ("muge-base", "muge-dsl")
    emit(store, job_id, "phase", name="predict:ensemble")
    emit(store, job_id, "phase", name="ensemble:fit-weights")
    for i, run in enumerate(runs):
        emit(store, job_id, "ensemble", member=i, checkpoint=CHECKPOINT.format(run), progress="encoding",
             scores=f"npy/epoch_latest_pt-valid_texts-{i}.npy")
        emit(store, job_id, "ensemble", member=i, checkpoint=CHECKPOINT.format(run), progress="scored",
             scores=f"npy/epoch_latest_pt-valid_texts-{i}.npy")
    for n in range(3):
        emit(store, job_id, "ensemble", progress=f"fit evaluation {n + 1}", weights=[0.5, 0.5], metrics={"mr": 50})
    emit(store, job_id, "ensemble", progress="fitted", weights=[0.6, 0.4], metrics={"r1": 40, "r5": 70, "r10": 80, "mr": 63.3},
         equal_weights=[0.5, 0.5], equal_metrics={"r1": 38, "r5": 69, "r10": 79, "mr": 62.0})
    emit(store, job_id, "phase", name="ensemble:score-members")
    member_metrics = ({"r1": 35.0, "r5": 66.0, "r10": 77.0, "mr": 59.33}, {"r1": 33.0, "r5": 64.0, "r10": 75.0, "mr": 57.33})
    for i, run in enumerate(runs):
        emit(store, job_id, "ensemble", member=i, checkpoint=CHECKPOINT.format(run), progress="reused",
             scores=f"npy/epoch_latest_pt-test_texts-{i}.npy")
        emit(store, job_id, "ensemble", member=i, checkpoint=CHECKPOINT.format(run), weight=(0.6, 0.4)[i],
             progress=f"{i + 1}/2", metrics=member_metrics[i])
    emit(store, job_id, "phase", name="ensemble:fuse")
    fused = {"r1": 38.0, "r5": 69.0, "r10": 79.0, "mr": 62.0}
    emit(store, job_id, "ensemble", progress="done", weights=[0.6, 0.4], metrics=fused)
    emit(store, job_id, "result", paths=["out.jsonl"], metrics=fused)
    store.transition(job_id, "succeeded")


def test_ensemble_prediction(control, redis_client, browser, tmp_path):
    store = JobStore(redis_client)
    job, _ = store.create(PredictSpec(mode="ensemble", image_data="i", text_data="t",
                                      members=[CHECKPOINT.format("muge-base"), CHECKPOINT.format("muge-dsl")],
                                      fit_weights_on="v", fit_images="vi"))
    _ensemble_history(store, job.id)

    sign_in(browser, control, f"/status?job={job.id}")
    wait_rendered(browser, job.id, state="succeeded")
    assert visible_panels(browser) == {"panel-phases", "panel-ensemble"}
    # Which runs, with which weights, each alone, and the fused row below them.
    assert table_rows(browser, "ensemble-table") == [
        ["0", "muge-base", "epoch_latest.pt", "0.6", "done", "35", "66", "77", "59.33"],
        ["1", "muge-dsl", "epoch_latest.pt", "0.4", "done", "33", "64", "75", "57.33"],
        ["", "fused ensemble", "2 members", "0.6 / 0.4", "done", "38", "69", "79", "62"]]
    verdict = browser.find_element(By.ID, "ensemble-verdict").text
    assert "best member (muge-base) 59.33: +2.67" in verdict and "beats its best member" in verdict
    assert table_rows(browser, "fit-table") == [["fitted", "0.6 / 0.4", "40", "70", "80", "63.3"],
                                                ["equal", "0.5 / 0.5", "38", "69", "79", "62"]]
    assert "fitted weights give MR +1.3 over equal weights (3 evaluations" in browser.find_element(By.ID, "fit-verdict").text
    assert [p[0] for p in table_rows(browser, "phases-table")] == [
        "predict:ensemble", "ensemble:fit-weights", "ensemble:score-members", "ensemble:fuse"]
    assert table_rows(browser, "jobs-table")[0][:4] == ["muge-base + muge-dsl", "ensemble", "ensemble", "off"]
    screenshot(browser, tmp_path, "status-ensemble")


def test_ensemble_member_in_progress(control, redis_client, browser, tmp_path):
    store = JobStore(redis_client)
    job, _ = store.create(PredictSpec(mode="ensemble", image_data="i", text_data="t",
                                      members=[CHECKPOINT.format("a"), CHECKPOINT.format("b")], weights=[1, 3]))
    store.transition(job.id, "running")
    emit(store, job.id, "phase", name="ensemble:score-members")
    emit(store, job.id, "ensemble", member=0, checkpoint=CHECKPOINT.format("a"), weight=0.25, progress="1/2",
         metrics={"r1": 10, "r5": 20, "r10": 30, "mr": 20})
    emit(store, job.id, "ensemble", member=1, checkpoint=CHECKPOINT.format("b"), progress="encoding")

    sign_in(browser, control, f"/status?job={job.id}")
    wait_rendered(browser, job.id)
    rows = table_rows(browser, "ensemble-table")
    assert [r[:5] for r in rows] == [["0", "a", "epoch_latest.pt", "0.25", "done"], ["1", "b", "epoch_latest.pt", "-", "scoring"]]
    assert rows[1][5:] == ["-", "-", "-", "-"]
    assert browser.find_element(By.ID, "fit-verdict").text == "Weights were given, not fitted."
    # A running job can be cancelled from its view.
    assert browser.find_element(By.ID, "cancel-job").is_displayed()


def test_test_time_online_prediction(control, redis_client, browser, tmp_path):
    store = JobStore(redis_client)
    job, _ = store.create(PredictSpec(mode="single", image_data="i", text_data="t", online="cache",
                                      online_max_epochs=3, resume=CHECKPOINT.format("muge-base")))
    store.transition(job.id, "running")
    emit(store, job.id, "phase", name="predict:single")
    emit(store, job.id, "validation", epoch=0, r1=20.0, r5=45.0, r10=55.0, mr=40.0)
    for epoch in (1, 2, 3):
        for batch in range(4):
            emit(store, job.id, "online", split="test", batch=batch, queries=16, pairs=14, missing={"failed": 2},
                 wait_ms=0.0, loss=2.0 / epoch)
        emit(store, job.id, "online_pass", split="test", epoch=epoch, pass_index=epoch, queries=64, pairs=56,
             missing={"failed": 8}, wall_s=12.0 + epoch)
    emit(store, job.id, "result", paths=["out.jsonl"], metrics={"r1": 30.0, "r5": 60.0, "r10": 70.0, "mr": 53.33})
    store.transition(job.id, "succeeded")

    sign_in(browser, control, f"/status?job={job.id}")
    wait_rendered(browser, job.id, state="succeeded")
    assert visible_panels(browser) == {"panel-phases", "panel-online", "panel-metrics"}
    assert chart_points(browser, "chart-online-pairs") == [12, 12, 12]
    assert chart_points(browser, "chart-online-loss") == [12]
    # A pass recorded before the steps and the filter were counted shows "-" for them.
    assert table_rows(browser, "online-passes") == [["test", "1", "1", "64", "56", "8", "-", "-", "-", "-", "13s"],
                                                    ["test", "2", "2", "64", "56", "8", "-", "-", "-", "-", "14s"],
                                                    ["test", "3", "3", "64", "56", "8", "-", "-", "-", "-", "15s"]]
    assert table_rows(browser, "metrics-table") == [["before online learning", "20", "45", "55", "40"],
                                                    ["final (after online learning)", "30", "60", "70", "53.33"]]
    assert browser.find_element(By.ID, "online-missing").text == "Missing images by reason: failed 24"
    assert table_rows(browser, "jobs-table")[0][:4] == ["muge-base", "test-time online", "single", "cache"]
    screenshot(browser, tmp_path, "status-test-time-online")


def test_jobs_list_selects_by_address_and_waits_for_login(control, redis_client, browser, tmp_path):
    store = JobStore(redis_client)
    first, _ = store.create(TrainSpec(train_data="d/train", name="first-run"))
    second, _ = store.create(TrainSpec(train_data="d/train", val_data="d/valid", name="second-run", online="live"))
    store.transition(second.id, "running")
    emit(store, second.id, "waiting_for_login", reason="no crawler rank is logged in")

    sign_in(browser, control, f"/status?job={first.id}")
    wait_rendered(browser, first.id)
    assert not browser.find_element(By.ID, "login-wait").is_displayed()
    assert visible_panels(browser) == {"panel-training"}  # no online learning: no empty online charts
    # A click opens the job's view under its own address; back returns to the first.
    click_when_stable(browser, f"tr[data-job='{second.id}']")
    wait_rendered(browser, second.id)
    assert browser.current_url.endswith(f"/status?job={second.id}")
    notice = browser.find_element(By.ID, "login-wait")
    assert notice.is_displayed() and notice.find_element(By.TAG_NAME, "a").get_attribute("href").endswith("/login")
    browser.back()
    wait_rendered(browser, first.id)
    assert browser.find_element(By.ID, "job-title").text == "first-run \u00b7 training"
