"""The control service against a hostile client: forged cross-site requests, oversized and
non-JSON-able bodies, token guessing, framing, CDN scripts, and Redis restarts (real uvicorn,
real Redis, real Chromium)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from shared import redis_keys
from shared.jobs import JobStore
from shared.jobspec import PredictSpec
from tests.control.conftest import REPO_ROOT, ControlServer, sign_in
from tests.helpers import RedisServer, free_port, stop_process

TRAIN = {"train_data": "datasets/tiny/lmdb/train", "max_steps": 3}


def _sign_in(client: httpx.Client, control: ControlServer) -> None:
    assert client.post("/auth/session", data={"token": control.token}).status_code == 303


def test_cookie_requests_that_change_state_must_come_from_this_origin(control, data_root):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    with control.client() as api:
        job = api.post("/jobs/train", json=TRAIN).json()
    own = control.base_url
    other_port = own.rsplit(":", 1)[0] + ":1"  # same host (same site), another port
    with httpx.Client(base_url=control.base_url, timeout=10) as page:
        _sign_in(page, control)
        # A form on another port of the same host: the browser sends the cookie and its Origin.
        forged = page.post(f"/jobs/{job['id']}/cancel", headers={"Origin": other_port})
        assert forged.status_code == 403, forged.text
        no_origin = page.post(f"/jobs/{job['id']}/cancel")
        assert no_origin.status_code == 403
        by_referer = page.post(f"/jobs/{job['id']}/cancel", headers={"Referer": other_port + "/x"})
        assert by_referer.status_code == 403
        assert page.get(f"/jobs/{job['id']}").json()["state"] == "queued"
        # Reading with the cookie needs no origin; the page's own requests pass.
        assert page.get("/api/status").status_code == 200
        ok = page.post(f"/jobs/{job['id']}/cancel", headers={"Origin": own})
        assert ok.status_code == 202 and ok.json()["state"] == "cancelled"
        # Another site cannot sign a browser in either.
        assert page.post("/auth/session", data={"token": control.token},
                         headers={"Origin": other_port}).status_code == 403
    # The API token is no browser credential: no origin needed.
    with control.client() as api:
        other = api.post("/jobs/train", json=TRAIN).json()
        assert api.post(f"/jobs/{other['id']}/cancel").status_code == 202


def test_bodies_are_bounded_and_status_summaries_stay_small(control, data_root, redis_client):
    with control.client() as api:
        huge = {**TRAIN, "name": "x", "padding": "y" * 2_000_000}
        assert api.post("/jobs/train", json=huge).status_code == 413
        # Without a length, the body is counted while it arrives.
        chunks = (b"x" * 65536 for _ in range(40))
        chunked = api.post("/jobs/train", content=chunks, headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413
        assert api.get("/jobs").json()["total"] == 0
    # A record with a large spec and result (written as a runner would) keeps a small summary.
    store = JobStore(redis_client)
    spec = PredictSpec(mode="ensemble", image_data="i", text_data="t",
                       members=[f"experiments/m{i}/checkpoints/epoch_latest.pt" for i in range(60)],
                       weights=[1.0] * 60)
    record, _ = store.create(spec)
    store.transition(record.id, "failed", reason="r" * 100_000,
                     result={"predictions": "p", "per_member": list(range(10_000))})
    with control.client() as api:
        body = api.get("/api/status").content
        job = api.get("/api/status").json()["jobs"][0]
    assert len(body) < 20_000, len(body)
    assert job["reason"].startswith("rrr") and len(job["reason"]) < 1000
    assert len(job["spec"]["members"]) <= 17 and job["spec"]["members"][-1] == "+44 more"


def test_non_finite_numbers_are_a_422_never_a_500(control):
    with control.client() as api:
        for raw in ('{"train_data": "d", "max_steps": 3, "lr": NaN}',
                    '{"train_data": "d", "max_steps": 3, "lr": Infinity}',
                    '{"train_data": "d", "max_steps": 3, "wd": -Infinity}',
                    '{"train_data": "d", "max_steps": NaN}'):
            response = api.post("/jobs/train", content=raw, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (raw, response.status_code, response.text)
            assert response.json()["detail"], raw
        response = api.post("/jobs/predict", content='{"mode": "ensemble", "image_data": "i", "text_data": "t", '
                            '"members": ["a", "b"], "weights": [NaN, 1]}',
                            headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text


def test_a_finished_job_record_can_be_deleted(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    with control.client() as api:
        job = api.post("/jobs/train", json={**TRAIN, "idempotency_key": "del-1"}).json()
        assert api.delete(f"/jobs/{job['id']}").status_code == 409  # still queued
        assert api.post(f"/jobs/{job['id']}/cancel").status_code == 202
        assert api.delete(f"/jobs/{job['id']}").status_code == 204
        assert api.get(f"/jobs/{job['id']}").status_code == 404
        assert api.delete(f"/jobs/{job['id']}").status_code == 404
        assert api.get("/jobs").json()["total"] == 0
        # Its idempotency key is free again.
        again = api.post("/jobs/train", json={**TRAIN, "idempotency_key": "del-1"})
        assert again.status_code == 201 and again.json()["id"] != job["id"]
    assert not redis_client.exists(redis_keys.job_events(job["id"]))


def test_wrong_sign_in_tries_are_throttled(redis_url, data_root):
    server = ControlServer(redis_url, data_root, env={"CNCLIP_CONTROL_SIGN_IN_FAILURES": "5",
                                                      "CNCLIP_CONTROL_SIGN_IN_WINDOW_S": "2"}).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            codes = [client.post("/auth/session", data={"token": f"guess-{i}"}).status_code for i in range(8)]
            assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3
            # Even the right token waits out the window: guessing cannot be told from using it.
            blocked = client.post("/auth/session", data={"token": server.token})
            assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
            time.sleep(2.2)
            assert client.post("/auth/session", data={"token": server.token}).status_code == 303
    finally:
        server.stop()


def test_session_cookie_is_secure_behind_a_tls_proxy(redis_url, data_root):
    server = ControlServer(redis_url, data_root,
                           env={"CNCLIP_CONTROL_FORWARDED_ALLOW_IPS": "127.0.0.1"}).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            proxied = client.post("/auth/session", data={"token": server.token},
                                  headers={"X-Forwarded-Proto": "https"})
            assert "secure" in proxied.headers["set-cookie"].lower()
            plain = client.post("/auth/session", data={"token": server.token})
            assert "secure" not in plain.headers["set-cookie"].lower()
    finally:
        server.stop()
    # Without a trusted proxy, a client's own X-Forwarded-Proto changes nothing.
    server = ControlServer(redis_url, data_root).start()
    try:
        forged = httpx.post(server.base_url + "/auth/session", data={"token": server.token},
                            headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in forged.headers["set-cookie"].lower()
    finally:
        server.stop()


def test_a_short_token_is_refused_on_a_public_address(redis_url, tmp_path):
    env = {**os.environ, "CNCLIP_REDIS_URL": redis_url, "CNCLIP_DATA_ROOT": str(tmp_path),
           "CNCLIP_CONTROL_HOST": "0.0.0.0", "CNCLIP_CONTROL_PORT": str(free_port())}
    for token, refused in (("a", True), ("s" * 15, True)):
        env["CNCLIP_CONTROL_TOKEN"] = token
        done = subprocess.run([sys.executable, "-m", "services.control"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "at least 16" in done.stderr, done
    # Sixteen characters are enough: it serves (it answers on its port, with the token).
    env["CNCLIP_CONTROL_TOKEN"] = "s" * 16
    port = int(env["CNCLIP_CONTROL_PORT"])
    proc = subprocess.Popen([sys.executable, "-m", "services.control"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        health = None
        while health is None:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the service never answered /healthz"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.status_code == 200
        jobs = httpx.get(f"http://127.0.0.1:{port}/jobs", headers={"Authorization": "Bearer " + "s" * 16})
        assert jobs.status_code == 200
    finally:
        stop_process(proc)


def test_every_answer_carries_the_security_headers(control):
    responses = [httpx.get(control.base_url + "/login", headers={"Accept": "text/html"}),  # 401 page
                 httpx.get(control.base_url + "/healthz")]
    with control.client() as api:
        responses += [api.get("/login"), api.get("/status"), api.get("/docs"), api.get("/jobs"),
                      api.get("/static/app.css")]
    for response in responses:
        csp = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, response.url
        assert "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.browser
def test_pages_and_docs_work_under_the_policy_with_nothing_from_outside(control, browser):
    sign_in(browser, control, "/status")
    browser.get(control.base_url + "/docs")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock-tag"))
    html = browser.page_source
    assert "cdn" not in html.lower() and "http://" + "unpkg" not in html
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })")
    assert loaded and all(url.startswith(control.base_url) for url in loaded), loaded
    for path in ("/status", "/login"):
        browser.get(control.base_url + path)
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "header.topbar"))
        time.sleep(1.5)  # the page's scripts fetch and draw
    logs = browser.get_log("browser")
    violations = [entry for entry in logs if "Content Security Policy" in entry.get("message", "")]
    assert not violations, violations
    # The sign-in page is styled by its own file, loaded before signing in.
    browser.delete_all_cookies()
    browser.get(control.base_url + "/status")
    form = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "sign-in"))
    assert form.value_of_css_property("background-color") == "rgba(255, 255, 255, 1)"


def test_first_request_after_a_redis_restart_succeeds(tmp_path, data_root):
    server = RedisServer(tmp_path / "redis").start()
    control = ControlServer(server.url, data_root).start()
    try:
        with control.client() as api:
            assert api.get("/jobs").status_code == 200
            assert api.get("/api/status").status_code == 200
            server.restart()
            assert api.get("/jobs").status_code == 200
            time.sleep(0.6)  # past the status cache
            assert api.get("/api/status").status_code == 200
    finally:
        control.stop()
        server.stop()
