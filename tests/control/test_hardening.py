"""Races, links, a broken record and a frozen Redis, against the real control service."""
from __future__ import annotations

import threading

import httpx

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
