"""The API's typed answers and its one mapping of domain errors, against a real uvicorn and Redis:
``/api/status`` and ``/api/login`` are declared in the OpenAPI schema and hold to it, and every
route answers a missing, finished, running or unreadable job in the same words."""
from __future__ import annotations

import time

from shared import redis_keys
from shared.jobs import JobStore
from shared.messages import LoginState
from services.control.schemas import LoginView, StatusAnswer

TRAIN = {"train_data": "datasets/tiny/lmdb/train", "max_steps": 3}


def _response_ref(schema: dict, path: str) -> dict:
    return schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


def test_status_and_login_answers_are_declared_and_hold_to_their_schema(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    with control.client() as client:
        schema = client.get("/openapi.json").json()
        assert _response_ref(schema, "/api/status") == {"$ref": "#/components/schemas/StatusAnswer"}
        assert _response_ref(schema, "/api/login")["items"] == {"$ref": "#/components/schemas/LoginView"}
        assert {"StatusJob", "CrawlerPool", "CrawlerRank"} <= set(schema["components"]["schemas"])

        queued = client.post("/jobs/train", json=TRAIN).json()["id"]
        odd = client.post("/jobs/train", json={**TRAIN, "max_steps": 4}).json()["id"]
        # A value of the wrong type (as an old or foreign writer might leave) breaks no answer:
        # that job is shown as unreadable, with why.
        redis_client.hset(redis_keys.job(odd), "attempts", '"many"')
        redis_client.set(redis_keys.crawler_rank_claim(0), "worker-0", ex=60)
        for rank in (0, 1):  # rank 1 has no live worker: offline
            state = LoginState(rank=rank, state="waiting_for_scan", qr_updated_at=time.time(),
                               qr_expires_at=time.time() + 300)
            redis_client.hset(redis_keys.crawler_login(rank), mapping=state.to_hash())
            redis_client.sadd(redis_keys.crawler_ranks(), rank)
        redis_client.hset(redis_keys.crawler_stats(0), mapping={"pages": 3, "current_query": "红色 连衣裙"})

        status = client.get("/api/status").json()
        logins = client.get("/api/login").json()
    answer = StatusAnswer.model_validate(status)
    jobs = {j.id: j for j in answer.jobs}
    assert jobs[queued].state == "queued" and jobs[queued].view.kind == "train"
    assert jobs[odd].state == "unreadable" and "attempts" in jobs[odd].reason
    ranks = {r.rank: r for r in answer.crawler.ranks}
    assert ranks[0].state == "waiting_for_scan" and ranks[0].pages == 3 and ranks[0].current_query == "红色 连衣裙"
    assert ranks[1].state == "offline"
    views = {v.rank: v for v in map(LoginView.model_validate, logins)}
    assert views[0].has_qr is False and views[1].state == "offline"


def test_domain_errors_are_answered_alike_on_every_route(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    store = JobStore(redis_client)
    with control.client() as client:
        for method, path in (("GET", "/jobs/nope"), ("POST", "/jobs/nope/cancel"), ("DELETE", "/jobs/nope"),
                             ("GET", "/jobs/nope/series"), ("GET", "/jobs/nope/events"),
                             ("GET", "/jobs/nope/results/data")):
            answer = client.request(method, path)
            assert (answer.status_code, answer.json()) == (404, {"detail": "no job nope"}), (method, path)

        first = client.post("/jobs/train", json={**TRAIN, "idempotency_key": "k-1"}).json()["id"]
        clash = client.post("/jobs/train", json={**TRAIN, "max_steps": 9, "idempotency_key": "k-1"})
        assert clash.status_code == 409 and "idempotency key 'k-1'" in clash.json()["detail"]
        assert client.post(f"/jobs/{first}/cancel").status_code == 202  # queued: cancelled at once
        again = client.post(f"/jobs/{first}/cancel")
        assert (again.status_code, again.json()["detail"]) == (409, f"job {first} already cancelled")

        running = client.post("/jobs/train", json=TRAIN).json()["id"]
        store.transition(running, "running")
        refused = client.delete(f"/jobs/{running}")
        assert (refused.status_code, refused.json()["detail"]) == (409, f"job {running} is running: cancel it first")

        broken = client.post("/jobs/train", json=TRAIN).json()["id"]
        redis_client.hset(redis_keys.job(broken), "spec", "{not json")
        for path in (f"/jobs/{broken}", f"/jobs/{broken}/results/data"):
            answer = client.get(path)
            assert answer.status_code == 409 and "cannot be read" in answer.json()["detail"], (path, answer.text)
        assert client.delete(f"/jobs/{broken}").status_code == 204

        bad = client.get("/jobs", params={"limit": "NaN"})
        assert bad.status_code == 422 and set(bad.json()["detail"][0]) == {"loc", "msg", "type"}
