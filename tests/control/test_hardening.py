"""Races, links, a broken record and a frozen Redis, against the real control service."""
from __future__ import annotations

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
