"""Online learning through the whole stack: the control API, the job runner, torchrun, the
crawl pool over Redis (a real crawler with Chromium under Xvfb against the demo shop, logged in
by confirming the shop's QR through its phone endpoint), the crawled-image cache."""
from __future__ import annotations

import math
import time

import pytest

from shared.image_cache import ImageCache
from tests.control.test_runner import TRAIN, sse_events, stack, shared_root, wait_for  # noqa: F401
from tests.fixtures_crawler import log_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ONLINE = {**TRAIN, "max_steps": 2, "valid_batch_size": 8, "online_wait_s": 120, "online_images": 2,
          "online_login_timeout_s": 300, "seed": 7,
          "online_step_ratio": 2.0}  # two training steps earn four online steps
# The steps at the validation pass's batches, so a replay from the cache repeats them exactly.
AT_VALIDATION = {**ONLINE, "online_schedule": "validation"}


def _online_events(control, job_id: str) -> list[dict]:
    return [e["data"] for e in sse_events(control, job_id) if e["type"] == "online"]


def _wait_progress(client, job_id: str, key: str, value, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    job = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["progress"].get(key) == value or job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never had {key}={value}: {job}")


def test_live_job_waits_for_login_learns_and_the_cache_replays_the_same_pairs(
        stack, shared_root, shop, crawler_workers, crawl_client):  # noqa: F811
    control, runner = stack
    crawler_workers(rank=0, mode="xvfb", wait_for=("waiting_for_scan", "logged_in"))
    with control.client() as client:
        job = client.post("/jobs/train", json={**AT_VALIDATION, "online": "live", "name": "live-run"}).json()
        waiting = _wait_progress(client, job["id"], "online_state", "waiting_for_login")
        assert waiting["state"] == "running", (waiting, runner.log_tail())
        assert waiting["progress"]["online_state"] == "waiting_for_login"
        log_in(crawl_client, shop, 0)  # the phone scans the QR shown on /login
        done = wait_for(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=600, runner=runner)
        assert done["state"] == "succeeded", (done, runner.log_tail())
        assert done["progress"]["online_state"] == "logged_in"
    live = _online_events(control, job["id"])
    assert live and sum(o["pairs"] for o in live) > 0
    assert 0 < sum(o["steps"] for o in live) <= 4  # a batch whose queries all went uncrawled steps not
    cache = ImageCache(shared_root / "online_cache", "valid")
    assert cache.queries() and all(len(cache.get(q)) == 2 for q in cache.queries())
    # Active crawling (the default share, 0.5): at most half of the queries were asked for, the
    # rest counted as skipped and never crawled.
    passes = [e["data"] for e in sse_events(control, job["id"]) if e["type"] == "online_pass"]
    distinct = len(cache.queries()) + passes[0]["skipped_active"]
    assert passes[0]["skipped_active"] > 0 and len(cache.queries()) <= math.ceil(0.5 * distinct)

    with control.client() as client:  # no crawler is needed to replay the cache
        replay = client.post("/jobs/train", json={**AT_VALIDATION, "online": "cache", "name": "cache-run"}).json()
        done = wait_for(client, replay["id"], {"succeeded", "failed", "cancelled"}, timeout=600, runner=runner)
        assert done["state"] == "succeeded", (done, runner.log_tail())
    cached = _online_events(control, replay["id"])
    assert [(o["batch"], o["pairs"], o["pairs_sha256"]) for o in cached] == \
        [(o["batch"], o["pairs"], o["pairs_sha256"]) for o in live]


def test_by_default_the_steps_are_taken_during_training_and_validation_takes_those_still_owed(
        stack, shared_root, shop, crawler_workers, crawl_client):  # noqa: F811
    control, runner = stack
    crawler_workers(rank=0, mode="xvfb", wait_for=("waiting_for_scan", "logged_in"))
    log_in(crawl_client, shop, 0)
    with control.client() as client:
        job = client.post("/jobs/train", json={**ONLINE, "online": "live", "name": "default-run",
                                               "max_steps": 6, "online_step_ratio": 1.0}).json()
        done = wait_for(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=600, runner=runner)
        assert done["state"] == "succeeded", (done, runner.log_tail())
    events = sse_events(control, job["id"])
    online = [e["data"] for e in events if e["type"] == "online"]
    passes = [e["data"] for e in events if e["type"] == "online_pass"]
    # Six training steps earn six online steps: taken between training steps once the pictures
    # crawled from the job's start are in the cache, those still owed at the validation pass,
    # which waits for them (a batch none of whose queries was crawled steps not); none twice.
    assert 0 < sum(o["steps"] for o in online) <= 6 and all(o["pairs"] > 0 for o in online if o["steps"])
    assert sum(p["steps"] for p in passes) == sum(o["steps"] for o in online)
    assert ImageCache(shared_root / "online_cache", "valid").queries()
