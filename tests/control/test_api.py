"""The control service's HTTP API against a real uvicorn and a real Redis (no runner: jobs stay
queued unless a test moves them through the same JobStore the runner uses)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from shared import redis_keys
from shared.jobs import JobStore
from shared.messages import JobEvent, LoginState
from tests.control.conftest import REPO_ROOT, ControlServer
from tests.helpers import free_port

TRAIN = {"train_data": "datasets/tiny/lmdb/train", "max_steps": 3}


def _sample_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "0" if "rank" in m.group(0) else "20260101-000000-abcd", path)


@pytest.fixture()
def unthrottled(redis_url, data_root):
    """A server that lets many wrong tokens through (401, not 429): the test below tries every
    route with one."""
    server = ControlServer(redis_url, data_root, env={"CNCLIP_CONTROL_SIGN_IN_FAILURES": "100000"}).start()
    yield server
    server.stop()


def test_everything_but_healthz_needs_the_token(unthrottled):
    control = unthrottled
    with control.client() as client:
        schema = client.get("/openapi.json").json()
    routes = [(method.upper(), _sample_path(path)) for path, item in schema["paths"].items()
              for method in item]
    routes += [("GET", p) for p in ("/", "/status", "/login", "/docs", "/openapi.json", "/static/app.css",
                                    "/static/status.js", "/api/login/events", "/metrics", "/login/0/qr.png",
                                    "/no/such/page")]
    routes += [("POST", "/auth/logout")]
    assert len(routes) > 15
    for token in (None, "wrong-token"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for method, path in routes:
            response = httpx.request(method, control.base_url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (method, path, token, response.status_code)
    health = httpx.get(control.base_url + "/healthz")
    assert health.status_code == 200 and health.json()["redis"] is True
    page = httpx.get(control.base_url + "/status", headers={"Accept": "text/html"})
    assert page.status_code == 401 and 'id="sign-in"' in page.text
    basic = httpx.get(control.base_url + "/jobs", auth=("any", control.token))
    assert basic.status_code == 200


def test_sign_in_sets_a_cookie_for_the_pages(control):
    with httpx.Client(base_url=control.base_url, timeout=10) as browser:
        wrong = browser.post("/auth/session", data={"token": "nope", "next": "/login"})
        assert wrong.status_code == 401 and not browser.cookies
        right = browser.post("/auth/session", data={"token": control.token, "next": "//evil.example/"})
        assert right.status_code == 303 and right.headers["location"] == "/status"
        assert "httponly" in right.headers["set-cookie"].lower()
        assert "samesite=strict" in right.headers["set-cookie"].lower()
        assert browser.get("/status").status_code == 200
        assert browser.get("/api/status").status_code == 200
        browser.post("/auth/logout", headers={"Origin": control.base_url})
        assert browser.get("/status").status_code == 401


def test_bad_specs_get_422_with_the_fields_named(control):
    with control.client() as client:
        cases = [
            ("/jobs/train", {"train_data": "../../etc"}, {"train_data"}),
            ("/jobs/train", {"train_data": "d", "max_steps": 3, "max_epochs": 1}, {"max_epochs"}),
            ("/jobs/train", {"train_data": "d", "lr": -1, "online": "sometimes"}, {"lr", "online"}),
            ("/jobs/train", {"max_steps": 1}, {"train_data"}),
            ("/jobs/predict", {"mode": "single", "image_data": "i", "text_data": "t"}, {"resume"}),
            ("/jobs/predict", {"mode": "ensemble", "image_data": "i", "text_data": "t",
                               "members": ["a", "b", "c"], "weights": [1, 2]}, {"weights"}),
            ("/jobs/predict", {"mode": "vote", "image_data": "i", "text_data": "t"}, {"mode"}),
        ]
        for path, body, fields in cases:
            response = client.post(path, json=body)
            assert response.status_code == 422, (body, response.text)
            named = {e["loc"][-1] for e in response.json()["detail"]}
            assert fields <= named, (body, named)
        assert client.post("/jobs/train", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
        assert client.get("/jobs", params={"limit": 0}).status_code == 422
        assert client.get("/jobs").json()["total"] == 0  # nothing was queued


def test_idempotency_key(control, data_root):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    with control.client() as client:
        first = client.post("/jobs/train", json={**TRAIN, "idempotency_key": "run-1"})
        again = client.post("/jobs/train", json={**TRAIN, "idempotency_key": "run-1"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        by_header = client.post("/jobs/train", json=TRAIN, headers={"Idempotency-Key": "run-2"})
        by_header_again = client.post("/jobs/train", json=TRAIN, headers={"Idempotency-Key": "run-2"})
        assert by_header.json()["id"] == by_header_again.json()["id"] != first.json()["id"]
        conflict = client.post("/jobs/train", json={**TRAIN, "max_steps": 4, "idempotency_key": "run-1"})
        assert conflict.status_code == 409
        jobs = client.get("/jobs").json()
        assert jobs["total"] == 2 and {j["state"] for j in jobs["jobs"]} == {"queued"}


def test_the_api_shows_the_job_not_the_runner_machinery(control, data_root, redis_client):
    """Process ids, the master address, the spec fingerprint and raw output lines stay in the
    stored record; a failed job's last output lines come back as its ``error``."""
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    store = JobStore(redis_client)
    hidden = {"runner_pid", "runner_pgid", "master_addr", "log_tail", "fingerprint"}
    with control.client() as client:
        submitted = client.post("/jobs/train", json=TRAIN).json()
        assert not hidden & set(submitted) and submitted["spec"]["kind"] == "train"
        store.transition(submitted["id"], "running", runner_host="gpu-1", runner_pid=4321, runner_pgid=4321,
                         master_addr="10.0.0.5")
        output = [f"line {i}" for i in range(30)] + ["RuntimeError: CUDA out of memory"]
        store.transition(submitted["id"], "failed", reason="exit code 1", log_tail=output)
        job = client.get(f"/jobs/{submitted['id']}").json()
        listed = client.get("/jobs").json()["jobs"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert not hidden & set(job)
    assert job["runner_host"] == "gpu-1" and job["spec"]["train_data"] == TRAIN["train_data"]
    assert job["error"].splitlines()[-1] == "RuntimeError: CUDA out of memory"
    assert job["error"].splitlines()[0] == "line 16"  # the last 15 lines
    assert "10.0.0.5" not in json.dumps(job) and "4321" not in json.dumps(job)
    assert [j["id"] for j in listed] == [submitted["id"]] and "spec" not in listed[0]
    assert listed[0]["state"] == "failed" and listed[0]["kind"] == "train"
    assert not hidden & set(schema["JobPublic"]["properties"]) and "JobRecord" not in schema


def test_missing_inputs_are_refused_at_submission(control, data_root, redis_client):
    with control.client() as client:
        response = client.post("/jobs/predict", json={
            "mode": "single", "image_data": "datasets/x/lmdb/test", "text_data": "datasets/x/test_texts.jsonl",
            "resume": "resume/model-1.pt"})
        assert response.status_code == 422
        assert [e["loc"] for e in response.json()["detail"]] == [
            ["body", "image_data"], ["body", "text_data"], ["body", "resume"]]
        assert client.get("/jobs").json()["total"] == 0  # nothing recorded
    assert redis_client.llen(redis_keys.GPU_QUEUE) == 0  # never handed to a runner


def test_unknown_models_and_bad_numbers_are_refused_naming_the_field(control, data_root):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    with control.client() as client:
        for bad, field in (('"vision_model": "--resume"', "vision_model"), ('"lr": 1e400', "lr"),
                           ('"lr": NaN', "lr"), ('"weights": [Infinity]', "weights"),
                           ('"max_epochs": 2', "max_epochs"), ('"online": "live"', "online")):
            body = '{"train_data": "%s", "max_steps": 3, %s}' % (TRAIN["train_data"], bad)
            response = client.post("/jobs/train", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (bad, response.text)
            assert field in [e["loc"][-1] for e in response.json()["detail"]]


def test_a_taken_run_name_is_refused_unless_continued(control, data_root):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    (data_root / "experiments" / "mine" / "checkpoints").mkdir(parents=True)
    with control.client() as client:
        taken = client.post("/jobs/train", json={**TRAIN, "name": "mine"})
        assert taken.status_code == 409 and "continue_run" in taken.json()["detail"]
        assert client.post("/jobs/train", json={**TRAIN, "name": "mine", "continue_run": True}).status_code == 201
        assert client.post("/jobs/train", json={**TRAIN, "name": "fresh"}).status_code == 201


def test_submitted_job_is_queued_for_the_runner(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    with control.client() as client:
        job = client.post("/jobs/train", json={**TRAIN, "nnodes": 2}).json()
    assert job["state"] == "queued"
    messages = [json.loads(m) for m in redis_client.lrange(redis_keys.GPU_QUEUE, 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["trainer.run_job"] * 2
    assert sorted(json.loads(__import__("base64").b64decode(m["body"]))[1]["node_rank"] for m in messages) == [0, 1]


def test_cancel(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    store = JobStore(redis_client)
    with control.client() as client:
        queued = client.post("/jobs/train", json=TRAIN).json()
        response = client.post(f"/jobs/{queued['id']}/cancel")
        assert response.status_code == 202 and response.json()["state"] == "cancelled"
        assert client.post(f"/jobs/{queued['id']}/cancel").status_code == 409
        assert client.post("/jobs/no-such-job/cancel").status_code == 404
        running = client.post("/jobs/train", json=TRAIN).json()
        store.transition(running["id"], "running")
        flagged = client.post(f"/jobs/{running['id']}/cancel").json()
        assert flagged["state"] == "running" and flagged["cancel_requested"] is True
        assert store.cancel_requested(running["id"])
        assert client.get("/jobs/no-such-job").status_code == 404
        assert client.get("/jobs", params={"state": "cancelled"}).json()["jobs"][0]["id"] == queued["id"]


def _read_sse(response) -> list[dict]:
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            current[key] = value[1:] if value.startswith(" ") else value
    return events


def test_events_stream_until_the_job_ends(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    store = JobStore(redis_client)
    with control.client() as client:
        job = client.post("/jobs/train", json=TRAIN).json()
    store.transition(job["id"], "running")
    for step in (1, 2, 3):
        store.append_event(job["id"], JobEvent(type="train_step", data={"step": step, "total_steps": 3, "loss": 1.0 / step}))
    store.append_event(job["id"], JobEvent(type="log", data={"level": "info", "message": "hello"}))

    import threading
    threading.Timer(1.0, lambda: store.transition(job["id"], "succeeded")).start()
    with httpx.stream("GET", f"{control.base_url}/jobs/{job['id']}/events", headers=control.headers,
                      timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _read_sse(response)  # returns only because the stream ends with the job
    kinds = [e["event"] for e in events]
    assert kinds == ["state", "state", "train_step", "train_step", "train_step", "log", "state"]
    assert [json.loads(e["data"])["data"].get("state") for e in events if e["event"] == "state"] == \
        ["queued", "running", "succeeded"]
    assert json.loads(events[4]["data"])["data"]["loss"] == pytest.approx(1 / 3)
    with httpx.stream("GET", f"{control.base_url}/jobs/{job['id']}/events",
                      headers={**control.headers, "Last-Event-ID": events[4]["id"]}, timeout=30) as response:
        rest = _read_sse(response)
    assert [e["event"] for e in rest] == ["log", "state"]
    with control.client() as client:
        assert client.get("/jobs/unknown-job/events").status_code == 404
        series = client.get(f"/jobs/{job['id']}/series").json()
        assert [p["loss"] for p in series["train"]] == pytest.approx([1.0, 0.5, 1 / 3])


def test_status_data_and_metrics(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    store = JobStore(redis_client)
    for rank, state in ((0, "logged_in"), (1, "waiting_for_scan"), (2, "logged_in")):
        redis_client.hset(redis_keys.crawler_login(rank), mapping=LoginState(rank=rank, state=state).to_hash())
        redis_client.sadd(redis_keys.crawler_ranks(), rank)
        redis_client.set(redis_keys.crawler_rank_claim(rank), f"worker-{rank}", ex=60)  # alive
        redis_client.hset(redis_keys.crawler_stats(rank), mapping={"pages": 10 * rank, "failures": rank})
    redis_client.rpush(redis_keys.CRAWL_QUEUE, *[b"{}"] * 7)
    with control.client() as client:
        job = client.post("/jobs/train", json=TRAIN).json()
        store.transition(job["id"], "running")
        store.update(job["id"], progress={"step": 5, "total_steps": 10, "phase": "train"})
        status = client.get("/api/status").json()
        assert status["jobs"][0]["progress"]["step"] == 5 and status["jobs"][0]["state"] == "running"
        assert status["crawler"]["queue_depth"] == 7 and status["crawler"]["logged_in"] == 2
        assert [r["rank"] for r in status["crawler"]["ranks"]] == [0, 1, 2]
        assert status["crawler"]["ranks"][2]["pages"] == 20
        metrics = client.get("/metrics").text
    assert 'cnclip_jobs{state="running"} 1.0' in metrics
    assert "cnclip_crawl_queue_depth 7.0" in metrics
    assert "cnclip_crawler_ranks_logged_in 2.0" in metrics
    assert 'cnclip_http_request_duration_seconds_count{method="GET",route="/api/status",status="200"} 1.0' in metrics
    assert 'route="/jobs/train",status="201"' in metrics


def test_refuses_a_public_address_without_a_token(redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_CONTROL_")}
    env.update({"CNCLIP_REDIS_URL": redis_url, "CNCLIP_CONTROL_HOST": "0.0.0.0",
                "CNCLIP_CONTROL_PORT": str(free_port())})
    done = subprocess.run([sys.executable, "-m", "services.control"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "CNCLIP_CONTROL_TOKEN" in done.stderr


def test_loopback_without_a_token_makes_one_up(redis_url, tmp_path):
    token_file = tmp_path / "token"
    server = ControlServer(redis_url, tmp_path, token="", env={"CNCLIP_CONTROL_TOKEN_FILE": str(token_file)})
    server.start()
    try:
        token = token_file.read_text().strip()
        assert len(token) >= 24 and oct(token_file.stat().st_mode)[-3:] == "600"
        assert httpx.get(server.base_url + "/jobs").status_code == 401
        assert httpx.get(server.base_url + "/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        server.stop()


def test_qr_codes_are_served_privately(control, redis_client):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    redis_client.set(redis_keys.crawler_qr(3), png)
    redis_client.set(redis_keys.crawler_rank_claim(3), "worker-1", ex=60)  # a live worker holds rank 3
    with control.client() as client:
        response = client.get("/login/3/qr.png")
        assert response.status_code == 200 and response.content == png
        assert response.headers["content-type"] == "image/png"
        assert "no-store" in response.headers["cache-control"]
        assert client.get("/login/4/qr.png").status_code == 404
        assert client.get("/login/-1/qr.png").status_code == 422


def test_redis_outage_is_a_503_not_a_crash(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    server = ControlServer(dead, tmp_path).start()
    try:
        with server.client() as client:
            assert client.get("/healthz").json()["redis"] is False
            assert client.get("/jobs").status_code == 503
            assert client.get("/api/status").status_code == 503
    finally:
        server.stop()


def test_event_stream_survives_long_quiet_spells(redis_url, data_root, redis_client):
    """XREAD blocks for the whole ping interval: the Redis client must wait that long too."""
    server = ControlServer(redis_url, data_root, env={"CNCLIP_CONTROL_SSE_PING_S": "8"}).start()
    store = JobStore(redis_client)
    try:
        from shared.jobspec import TrainSpec
        record, _ = store.create(TrainSpec(train_data="d"))
        store.transition(record.id, "running")
        import threading
        threading.Timer(10.0, lambda: store.transition(record.id, "succeeded")).start()
        with httpx.stream("GET", f"{server.base_url}/jobs/{record.id}/events", headers=server.headers,
                          timeout=60) as response:
            events = _read_sse(response)
    finally:
        server.stop()
    assert [e["event"] for e in events] == ["state", "state", "state"]
    assert json.loads(events[-1]["data"])["data"]["state"] == "succeeded"
