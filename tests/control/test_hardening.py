"""Races, links, a broken record and a frozen Redis, against the real control service."""
from __future__ import annotations

import json
import threading

import httpx
import pytest

from shared import redis_keys
from shared.jobs import JobStore

TRAIN = {"train_data": "datasets/tiny/lmdb/train", "max_steps": 3}


def _post_together(control, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """Sends every body at once: each thread has its own connection and waits at a barrier."""
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def send(i: int) -> None:
        with control.client() as client:
            client.get("/healthz")  # the connection is open before the race starts
            barrier.wait()
            answers[i] = client.post(path, json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [a for a in answers if a is not None]


def test_concurrent_submissions_of_one_new_run_name_get_one_201(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    answers = _post_together(control, "/jobs/train", [{**TRAIN, "name": "race"}] * 6)
    codes = sorted(a.status_code for a in answers)
    assert codes == [201, 409, 409, 409, 409, 409], [a.text for a in answers]
    winner = next(a.json()["id"] for a in answers if a.status_code == 201)
    assert all(winner in a.json()["detail"] for a in answers if a.status_code == 409)
    with control.client() as client:
        assert client.get("/jobs").json()["total"] == 1
        # Continuing the run is allowed while it is held; a new one under the name is not.
        assert client.post("/jobs/train", json={**TRAIN, "name": "race", "continue_run": True}).status_code == 201
        assert client.post("/jobs/train", json={**TRAIN, "name": "race"}).status_code == 409
        # A finished job that never wrote its folder gives the name back with its record.
        JobStore(redis_client).transition(winner, "failed", reason="test")
        assert client.delete(f"/jobs/{winner}").status_code == 204
        assert client.post("/jobs/train", json={**TRAIN, "name": "race"}).status_code == 201
    assert redis_client.get(redis_keys.run_name("race")) is not None


PREDICT = {"mode": "single", "image_data": "datasets/x/lmdb/test", "text_data": "datasets/x/test_texts.jsonl",
           "resume": "pretrained/model.pt"}


def _predict_inputs(data_root):
    (data_root / PREDICT["image_data"]).mkdir(parents=True)
    for relative in (PREDICT["text_data"], "datasets/x/valid_texts.jsonl", PREDICT["resume"]):
        (data_root / relative).parent.mkdir(parents=True, exist_ok=True)
        (data_root / relative).write_text("original\n")
    (data_root / "experiments").mkdir()


def test_outputs_through_links_inside_the_data_root_are_refused(control, data_root):
    _predict_inputs(data_root)
    (data_root / "experiments" / "out.jsonl").symlink_to(data_root / "datasets/x/valid_texts.jsonl")
    (data_root / "experiments" / "linked").symlink_to(data_root / "datasets/x", target_is_directory=True)
    (data_root / "datasets" / "other").mkdir()
    with control.client() as client:
        for output in ("experiments/out.jsonl", "experiments/linked/test_texts2.jsonl"):
            answer = client.post("/jobs/predict", json={**PREDICT, "output": output})
            assert answer.status_code == 422, answer.text
            detail = answer.json()["detail"]
            assert [(d["loc"], d["type"]) for d in detail] == [(["body", "output"], "linked_output")]
            assert "symbolic link" in detail[0]["msg"]
        # A training run named after a linked folder would write its checkpoints through it.
        (data_root / TRAIN["train_data"]).mkdir(parents=True)
        run = client.post("/jobs/train", json={**TRAIN, "name": "linked"})
        assert run.status_code == 422 and run.json()["detail"][0]["loc"] == ["body", "name"]
        assert client.get("/jobs").json()["total"] == 0
        assert client.post("/jobs/predict", json={**PREDICT, "output": "experiments/real.jsonl"}).status_code == 201
    assert (data_root / "datasets/x/valid_texts.jsonl").read_text() == "original\n"


def test_the_writer_never_follows_a_link_planted_after_the_check(data_root):
    """The link appears between submission and the write: the file behind it stays as it was."""
    from shared.jobspec import PredictSpec
    from shared.muge import write_predictions
    from shared.output_files import LinkedOutput

    _predict_inputs(data_root)
    spec = PredictSpec(**PREDICT, output="experiments/late/p.jsonl")
    assert spec.linked_outputs(data_root) == []
    path = spec.output_path(data_root, "job-1")
    (data_root / "experiments" / "late").symlink_to(data_root / "datasets/x", target_is_directory=True)
    (data_root / "experiments" / "p.jsonl").symlink_to(data_root / "datasets/x/valid_texts.jsonl")
    rows = [(1, list(range(10)))]
    for target in (path, data_root / "experiments" / "p.jsonl"):
        with pytest.raises(LinkedOutput, match="symbolic link"):
            write_predictions(target, rows)
    assert (data_root / "datasets/x/valid_texts.jsonl").read_text() == "original\n"
    assert not (data_root / "datasets/x/p.jsonl").exists()
    assert sorted(p.name for p in (data_root / "experiments").iterdir()) == ["late", "p.jsonl"]
    # And the resolved options of a job refuse it too (the runner fails the job with the reason).
    with pytest.raises(ValueError, match="symbolic link"):
        spec.resolved_options(data_root, job_id="job-1")
    # A plain path is written, atomically.
    plain = write_predictions(data_root / "experiments" / "results" / "p.jsonl", rows)
    assert plain.read_text().count("\n") == 1


def test_one_corrupt_record_is_listed_as_unreadable_and_the_rest_served(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    with control.client() as client:
        ids = [client.post("/jobs/train", json=TRAIN).json()["id"] for _ in range(4)]
        # Three ways a record goes bad: a field that is not JSON, one that is not a job's, a
        # key that is not a hash at all.
        redis_client.hset(redis_keys.job(ids[0]), "spec", "{not json")
        redis_client.hset(redis_keys.job(ids[1]), "state", '"exploded"')
        redis_client.delete(redis_keys.job(ids[2]))
        redis_client.set(redis_keys.job(ids[2]), "garbage")
        listed = client.get("/jobs")
        assert listed.status_code == 200, listed.text
        by_id = {j["id"]: j for j in listed.json()["jobs"]}
        assert set(by_id) == set(ids) and listed.json()["total"] == 4
        assert by_id[ids[3]]["state"] == "queued" and by_id[ids[3]]["kind"] == "train"
        for bad, words in ((ids[0], "not JSON"), (ids[1], "state"), (ids[2], "WRONGTYPE")):
            assert by_id[bad]["state"] == "unreadable" and words in by_id[bad]["reason"], by_id[bad]
            one = client.get(f"/jobs/{bad}")
            assert one.status_code == 409 and "cannot be read" in one.json()["detail"], one.text
            assert words in one.json()["detail"]
        assert client.get(f"/jobs/{ids[3]}").status_code == 200
        status = client.get("/api/status")
        assert status.status_code == 200, status.text
        shown = {j["id"]: j for j in status.json()["jobs"]}
        assert shown[ids[3]]["state"] == "queued"
        assert {shown[i]["state"] for i in ids[:3]} == {"unreadable"}
        assert "WRONGTYPE" in shown[ids[2]]["reason"]
        assert client.post(f"/jobs/{ids[1]}/cancel").status_code == 409
        # What cannot be read can still be removed.
        for bad in ids[:3]:
            assert client.delete(f"/jobs/{bad}").status_code == 204
        assert [j["id"] for j in client.get("/jobs").json()["jobs"]] == [ids[3]]
        assert client.get("/metrics").status_code == 200


def test_filtered_lists_read_an_index_that_follows_every_change(control, data_root, redis_client):
    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    _predict_inputs(data_root)
    store = JobStore(redis_client)
    with control.client() as client:
        trains = [client.post("/jobs/train", json=TRAIN).json()["id"] for _ in range(5)]
        predicts = [client.post("/jobs/predict", json=PREDICT).json()["id"] for _ in range(3)]
        for job_id in trains[:3] + predicts[:1]:
            store.transition(job_id, "running")
        store.transition(trains[0], "succeeded")
        store.transition(predicts[0], "failed", reason="test")
        client.post(f"/jobs/{trains[4]}/cancel")
        assert client.delete(f"/jobs/{predicts[0]}").status_code == 204

        def listed(**params) -> tuple[list[str], int]:
            answer = client.get("/jobs", params=params).json()
            return [j["id"] for j in answer["jobs"]], answer["total"]

        def expected():
            return {"state=running": ([trains[2], trains[1]], 2),
                    "kind=predict": ([predicts[2], predicts[1]], 2),
                    "kind=train&state=cancelled": ([trains[4]], 1),
                    "kind=train&state=queued": ([trains[3]], 1),
                    "state=failed": ([], 0),
                    "state=succeeded&limit=1&offset=0": ([trains[0]], 1)}

        for query, want in expected().items():
            assert listed(**dict(p.split("=") for p in query.split("&"))) == want, query
        assert listed()[1] == 7
        # Jobs recorded before the indexes existed are indexed the first time a list is asked
        # for after a restart.
        for key in redis_client.scan_iter(redis_keys.jobs_index_by_prefix() + "*"):
            redis_client.delete(key)
        redis_client.delete(redis_keys.jobs_index_version())
    control.stop()
    control.start()
    with control.client() as client:
        for query, want in expected().items():
            answer = client.get("/jobs?" + query).json()
            assert ([j["id"] for j in answer["jobs"]], answer["total"]) == want, query
        assert client.get("/jobs", params={"kind": "nope"}).status_code == 422


def test_healthz_answers_redis_false_while_redis_is_frozen(tmp_path, data_root):
    """SIGSTOP: the server keeps its sockets open and answers nothing, as a hung host does."""
    import os
    import signal
    import time

    from tests.control.conftest import ControlServer
    from tests.helpers import RedisServer

    redis_server = RedisServer(tmp_path / "redis").start()
    server = ControlServer(redis_server.url, data_root).start()
    try:
        with server.client() as client:
            assert client.get("/healthz").json()["redis"] is True
            # A second's wait is a health checker's whole budget: the client gives up after it.
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                answers = [httpx.get(server.base_url + "/healthz", timeout=1.0) for _ in range(3)]
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            assert [(a.status_code, a.json()["redis"]) for a in answers] == [(200, False)] * 3
            deadline = time.monotonic() + 10
            while client.get("/healthz").json()["redis"] is not True:
                assert time.monotonic() < deadline, "redis: true never came back after SIGCONT"
                time.sleep(0.1)
    finally:
        server.stop()
        redis_server.stop()


async def _follow(client, url: str, events: list, opened) -> None:
    """Reads one SSE stream to its end into ``events``; ``opened`` counts its first event."""
    current: dict = {}
    async with client.stream("GET", url) as response:
        assert response.status_code == 200, response.status_code
        async for line in response.aiter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                    if len(events) == 1:
                        opened()
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value[1:] if value.startswith(" ") else value


def test_many_followers_share_redis_readers_and_leave_the_api_up(control, data_root, redis_client):
    import asyncio

    (data_root / TRAIN["train_data"]).mkdir(parents=True)
    store = JobStore(redis_client)
    with control.client() as client:
        jobs = [client.post("/jobs/train", json=TRAIN).json()["id"] for _ in range(2)]
    for job_id in jobs:
        store.transition(job_id, "running")
    followers, steps = 200, 20
    baseline = len(redis_client.client_list())

    async def scenario():
        opened = 0

        def count():
            nonlocal opened
            opened += 1

        limits = __import__("httpx").Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=control.base_url, headers=control.headers, timeout=60,
                                     limits=limits) as client:
            streams = [[] for _ in range(followers)]
            tasks = [asyncio.create_task(_follow(client, f"/jobs/{jobs[i % 2]}/events", streams[i], count))
                     for i in range(followers)]
            deadline = asyncio.get_running_loop().time() + 120
            while opened < followers:
                assert not any(t.done() and t.exception() for t in tasks), [t.exception() for t in tasks if t.done()]
                assert asyncio.get_running_loop().time() < deadline, f"{opened} of {followers} streams opened"
                await asyncio.sleep(0.1)
            # Every follower is listening: the API still answers, and Redis holds one reader
            # per followed job (plus a few), not one connection per follower.
            listed = await client.get("/jobs")
            assert listed.status_code == 200 and listed.json()["total"] == 2
            connections = len(redis_client.client_list()) - baseline
            assert connections < followers // 2, connections
            for step in range(steps):
                for job_id in jobs:
                    store.append_event(job_id, JobEvent(type="train_step", data={"step": step}))
                await asyncio.sleep(0.01)
            for job_id in jobs:
                store.transition(job_id, "succeeded")
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            return streams

    from shared.messages import JobEvent
    streams = asyncio.run(scenario())
    for i, events in enumerate(streams):
        kinds = [e["event"] for e in events]
        assert kinds == ["state", "state"] + ["train_step"] * steps + ["state"], (i, kinds)
        assert [json.loads(e["data"])["data"]["step"] for e in events[2:-1]] == list(range(steps))
        assert len({e["id"] for e in events}) == len(events)


def test_followers_beyond_the_stated_capacity_get_503(redis_url, data_root, redis_client):
    from tests.control.conftest import ControlServer

    server = ControlServer(redis_url, data_root, env={"CNCLIP_CONTROL_SSE_MAX_FOLLOWERS": "2"}).start()
    store = JobStore(redis_client)
    try:
        from shared.jobspec import TrainSpec
        record, _ = store.create(TrainSpec(train_data="d"))
        store.transition(record.id, "running")
        url = f"{server.base_url}/jobs/{record.id}/events"
        with httpx.stream("GET", url, headers=server.headers, timeout=30) as first, \
                httpx.stream("GET", url, headers=server.headers, timeout=30) as second:
            assert (first.status_code, second.status_code) == (200, 200)
            # Both have joined (the readers are kept: a dropped one closes its stream).
            readers = [first.iter_lines(), second.iter_lines()]
            assert [next(r).startswith("id:") for r in readers] == [True, True]
            third = httpx.get(url, headers=server.headers, timeout=30)
            assert third.status_code == 503 and "too many" in third.json()["detail"]
            assert third.headers["retry-after"] == "5"
            with server.client() as client:
                assert client.get("/jobs").status_code == 200
        # Leaving frees the room.
        store.transition(record.id, "succeeded")
        with httpx.stream("GET", url, headers=server.headers, timeout=30) as again:
            assert again.status_code == 200
            assert [line for line in again.iter_lines() if line.startswith("event:")][-1] == "event: state"
    finally:
        server.stop()


def test_wrong_tokens_are_throttled_however_they_are_presented(redis_url, data_root):
    import base64
    import time

    from tests.control.conftest import ControlServer

    server = ControlServer(redis_url, data_root, env={"CNCLIP_CONTROL_SIGN_IN_FAILURES": "5",
                                                      "CNCLIP_CONTROL_SIGN_IN_WINDOW_S": "3"}).start()
    basic = "Basic " + base64.b64encode(b"any:guess").decode()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            # One limiter: wrong bearer tokens, a wrong basic password, a forged cookie and the
            # sign-in form all count towards the same five tries.
            codes = [client.get("/jobs", headers={"Authorization": f"Bearer guess-{i}"}).status_code
                     for i in range(2)]
            codes.append(client.get("/jobs", headers={"Authorization": basic}).status_code)
            codes.append(client.get("/api/status", headers={"Cookie": "cnclip_session=forged"}).status_code)
            codes.append(client.post("/auth/session", data={"token": "guess-form"}).status_code)
            assert codes == [401] * 5
            blocked = [client.get("/jobs", headers={"Authorization": "Bearer guess-x"}),
                       client.get("/jobs", headers={"Authorization": f"Bearer {server.token}"}),
                       client.post("/auth/session", data={"token": server.token})]
            assert [b.status_code for b in blocked] == [429] * 3
            assert int(blocked[0].headers["retry-after"]) >= 1 and "too many" in blocked[0].json()["detail"]
            # No credential at all is not a try: still a plain 401.
            assert client.get("/jobs").status_code == 401
            time.sleep(3.2)
            assert client.get("/jobs", headers={"Authorization": f"Bearer {server.token}"}).status_code == 200
    finally:
        server.stop()


def test_a_dead_crawlers_qr_code_expires_with_its_heartbeat(control, redis_client):
    import time

    from services.crawler import ranks
    from shared.messages import LoginState

    png = b"\x89PNG\r\n\x1a\n" + b"1" * 32
    live = ranks.claim_rank(redis_client, "worker-live", 4, 60)
    dead = ranks.claim_rank(redis_client, "worker-dead", 4, 1)  # stops refreshing: gone in 1 s
    for rank in (live, dead):
        state = LoginState(rank=rank, state="waiting_for_scan", qr_updated_at=time.time(),
                           qr_expires_at=time.time() + 300)
        redis_client.hset(redis_keys.crawler_login(rank), mapping=state.to_hash())
        redis_client.sadd(redis_keys.crawler_ranks(), rank)
        redis_client.set(redis_keys.crawler_qr(rank), png)
    with control.client() as client:
        views = {v["rank"]: v for v in client.get("/api/login").json()}
        assert views[dead]["state"] == "waiting_for_scan" and views[dead]["has_qr"]
        assert client.get(f"/login/{dead}/qr.png").status_code == 200
        deadline = time.monotonic() + 10
        while redis_client.exists(redis_keys.crawler_rank_claim(dead)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        views = {v["rank"]: v for v in client.get("/api/login").json()}
        assert views[dead]["state"] == "offline" and not views[dead]["has_qr"] and views[dead]["qr_url"] is None
        assert views[live]["state"] == "waiting_for_scan" and views[live]["has_qr"]
        gone = client.get(f"/login/{dead}/qr.png")
        assert gone.status_code == 404 and "offline" in gone.json()["detail"]
        assert client.get(f"/login/{live}/qr.png").content == png
        assert not redis_client.exists(redis_keys.crawler_qr(dead))  # the code is gone from Redis
        assert redis_client.exists(redis_keys.crawler_qr(live))
        time.sleep(0.6)  # /api/status is cached for half a second
        shown = {r["rank"]: r["state"] for r in client.get("/api/status").json()["crawler"]["ranks"]}
        assert shown == {live: "waiting_for_scan", dead: "offline"}


def test_many_login_pages_share_one_subscription(control, redis_client):
    import asyncio
    import time

    from shared.messages import LoginState

    pages = 200
    redis_client.set(redis_keys.crawler_rank_claim(0), "worker-0", ex=60)
    redis_client.hset(redis_keys.crawler_login(0), mapping=LoginState(rank=0, state="starting").to_hash())
    redis_client.sadd(redis_keys.crawler_ranks(), 0)
    baseline = len(redis_client.client_list())

    async def scenario():
        opened = 0

        def count():
            nonlocal opened
            opened += 1

        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=control.base_url, headers=control.headers, timeout=60,
                                     limits=limits) as client:
            streams = [[] for _ in range(pages)]

            async def page(events):
                try:
                    await _follow(client, "/api/login/events", events, count)
                except asyncio.CancelledError:
                    pass

            tasks = [asyncio.create_task(page(streams[i])) for i in range(pages)]
            deadline = asyncio.get_running_loop().time() + 120
            while opened < pages:
                assert asyncio.get_running_loop().time() < deadline, f"{opened} of {pages} pages opened"
                await asyncio.sleep(0.1)
            connections = len(redis_client.client_list()) - baseline
            assert (await client.get("/jobs")).status_code == 200
            # What a crawler does when its rank's state changes.
            state = LoginState(rank=0, state="waiting_for_scan", qr_updated_at=time.time())
            redis_client.hset(redis_keys.crawler_login(0), mapping=state.to_hash())
            redis_client.publish(redis_keys.crawler_login_channel(), "0")
            while not all(any(e["event"] == "rank" for e in s) for s in streams):
                assert asyncio.get_running_loop().time() < deadline, "a page missed the change"
                assert not any(t.done() for t in tasks), "a page's stream was cut"
                await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks)
            return streams, connections

    streams, connections = asyncio.run(scenario())
    assert connections < pages // 2, connections
    for events in streams:
        assert events[0]["event"] == "snapshot"
        ranks = [json.loads(e["data"]) for e in events if e["event"] == "rank"]
        assert ranks[-1]["state"] == "waiting_for_scan"
