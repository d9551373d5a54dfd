"""Jobs end to end: the control API (real uvicorn) queues them, a real Celery runner worker runs
`cnclip train` / `cnclip predict` under torchrun on the CPU, and the events come back."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from shared.jobs import JobStore
from services.trainer.runner.process import JOB_ENV
from tests.control.conftest import REPO_ROOT, ControlServer, RunnerWorker

pytestmark = pytest.mark.slow
DATASET = "datasets/tiny"
TINY = {"vision_model": "tiny", "text_model": "tiny", "precision": "fp32", "device": "cpu"}
TRAIN = {"train_data": f"{DATASET}/lmdb/train", "val_data": f"{DATASET}/lmdb/valid", "batch_size": 16,
         "valid_batch_size": 16, "num_workers": 0, "valid_num_workers": 0, "log_interval": 1,
         "warmup": 1, **TINY}


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory) -> Path:
    """A data root with a tiny synthetic MUGE data set and its LMDB, made by the real CLI."""
    root = tmp_path_factory.mktemp("data")
    out = root / DATASET
    cli = [sys.executable, "-m", "services.trainer.cli"]
    subprocess.run([*cli, "make-synthetic", "--out", str(out), "--n-train", "64", "--n-valid", "16",
                    "--n-test", "16", "--image-size", "32"], check=True, cwd=REPO_ROOT, capture_output=True)
    subprocess.run([*cli, "build-lmdb", "--data-dir", str(out), "--splits", "train,valid,test"],
                   check=True, cwd=REPO_ROOT, capture_output=True)
    return root


@pytest.fixture()
def stack(redis_url, shared_root):
    control = ControlServer(redis_url, shared_root).start()
    runner = RunnerWorker(redis_url, shared_root).start()
    yield control, runner
    runner.stop()
    control.stop()


def wait_for(client: httpx.Client, job_id: str, states: set[str], timeout: float = 240.0,
             runner: RunnerWorker | None = None) -> dict:
    deadline = time.monotonic() + timeout
    job = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stayed {job.get('state')}: {job}\n"
                         f"{runner.log_tail() if runner else ''}")


def wait_for_event(client: httpx.Client, job_id: str, kind: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        series = client.get(f"/jobs/{job_id}/series").json()
        if kind == "train_step" and series["train"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"no {kind} event from job {job_id}")


def sse_events(control: ControlServer, job_id: str) -> list[dict]:
    events = []
    with httpx.stream("GET", f"{control.base_url}/jobs/{job_id}/events", headers=control.headers,
                      timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:].strip()))
    return events


def no_process_of(job_id: str) -> bool:
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(JOB_ENV) == job_id:
                return False
        except (psutil.Error, OSError):
            continue
    return True


def test_training_job_runs_to_success_with_its_events(stack, shared_root):
    control, runner = stack
    with control.client() as client:
        job = client.post("/jobs/train", json={**TRAIN, "max_steps": 6}).json()
        done = wait_for(client, job["id"], {"succeeded", "failed", "cancelled"}, runner=runner)
        assert done["state"] == "succeeded", (done, runner.log_tail())
        assert done["progress"]["step"] == 6 and done["progress"]["total_steps"] == 6
        series = client.get(f"/jobs/{job['id']}/series").json()
    events = sse_events(control, job["id"])  # the whole history, then the stream ends
    # The record's headline is the last validation event's figure, not just some number.
    last_validation = [e["data"] for e in events if e["type"] == "validation"][-1]
    assert done["progress"]["validation"]["r10"] == pytest.approx(last_validation["r10"])
    assert done["progress"]["validation"]["step"] == last_validation["step"]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "state" and kinds[-1] == "state"
    assert [e["data"]["state"] for e in events if e["type"] == "state"] == ["queued", "running", "succeeded"]
    assert [e["data"]["step"] for e in events if e["type"] == "train_step"] == [1, 2, 3, 4, 5, 6]
    assert "validation" in kinds and "checkpoint" in kinds and "log" in kinds
    assert all(e["job_id"] == job["id"] for e in events)
    assert len(series["train"]) == 6 and series["validation"]
    checkpoints = shared_root / "experiments" / job["id"] / "checkpoints"
    assert (checkpoints / "epoch_latest.pt").is_file()


def test_prediction_job_writes_predictions_and_metrics(stack, shared_root):
    from services.trainer.cli import SUBCOMMANDS
    control, runner = stack
    assert "predict" in SUBCOMMANDS
    with control.client() as client:
        trained = client.post("/jobs/train", json={**TRAIN, "max_steps": 4, "name": "for-predict"}).json()
        assert wait_for(client, trained["id"], {"succeeded", "failed"}, runner=runner)["state"] == "succeeded"
        spec = {"mode": "single", "image_data": f"{DATASET}/lmdb/test",
                "text_data": f"{DATASET}/test_texts.jsonl",
                "resume": "experiments/for-predict/checkpoints/epoch_latest.pt", **TINY}
        job = client.post("/jobs/predict", json=spec).json()
        done = wait_for(client, job["id"], {"succeeded", "failed", "cancelled"}, runner=runner)
        assert done["state"] == "succeeded", (done, runner.log_tail())
    predictions = Path(done["result"]["predictions"])
    assert predictions == shared_root / "experiments/results" / f"{job['id']}_predictions.jsonl"
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(lines) == 16 and all(len(p["image_ids"]) == 10 for p in lines)
    metrics = done["result"]["metrics"]
    assert {"r1", "r5", "r10"} <= {k.lower().replace("@", "") for k in metrics} or "mean_recall" in metrics


def test_cancel_stops_a_running_job_and_all_its_processes(stack):
    control, runner = stack
    with control.client() as client:
        job = client.post("/jobs/train", json={**TRAIN, "max_steps": 100000, "val_data": None}).json()
        wait_for_event(client, job["id"], "train_step")
        assert client.get(f"/jobs/{job['id']}").json()["state"] == "running"
        assert not no_process_of(job["id"])
        response = client.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code == 202
        done = wait_for(client, job["id"], {"cancelled", "failed", "succeeded"}, timeout=60, runner=runner)
    assert done["state"] == "cancelled", done
    assert done["progress"]["step"] < 100000
    deadline = time.monotonic() + 20
    while not no_process_of(job["id"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert no_process_of(job["id"]), "a process of the cancelled job is still alive"


def test_a_killed_runner_leaves_no_job_running(redis_url, shared_root, redis_client):
    control = ControlServer(redis_url, shared_root).start()
    first = RunnerWorker(redis_url, shared_root).start()
    second = None
    try:
        with control.client() as client:
            failing = client.post("/jobs/train", json={**TRAIN, "max_steps": 100000, "val_data": None,
                                                       "auto_resume": False}).json()
            wait_for_event(client, failing["id"], "train_step")
            first.kill()
            second = RunnerWorker(redis_url, shared_root).start()
            done = wait_for(client, failing["id"], {"failed", "succeeded", "cancelled", "queued"}, timeout=60)
            assert done["state"] == "failed" and "died" in done["reason"], done
            deadline = time.monotonic() + 30
            while not no_process_of(failing["id"]) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert no_process_of(failing["id"])

            resumed = client.post("/jobs/train", json={**TRAIN, "max_steps": 30, "val_data": None,
                                                       "save_step_frequency": 2, "log_interval": 1}).json()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                job = client.get(f"/jobs/{resumed['id']}").json()
                # The step's own checkpoint is written first, then epoch_latest.pt (what a resume reads).
                if (job["progress"].get("checkpoint") or "").endswith("epoch_latest.pt") and job["state"] == "running":
                    break
                time.sleep(0.3)
            second.kill()
            third = RunnerWorker(redis_url, shared_root).start()
            try:
                done = wait_for(client, resumed["id"], {"failed", "succeeded", "cancelled"}, runner=third)
            finally:
                third.stop()
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2
        states = [e.data["state"] for _, e in JobStore(redis_client).events(resumed["id"]) if e.type == "state"]
        assert states == ["queued", "running", "queued", "running", "succeeded"]
        assert "epoch_latest.pt" in JobStore(redis_client).get(resumed["id"]).resume_from
    finally:
        for worker in (first, second):
            if worker:
                worker.stop()
        control.stop()


def test_missing_checkpoint_fails_fast_in_the_runner(stack, shared_root, redis_client):
    control, runner = stack
    # The control service sees the data root and refuses at once; a runner that is the first
    # to see the data (the control service on another machine) does the same.
    with control.client() as client:
        refused = client.post("/jobs/train", json={**TRAIN, "max_steps": 2, "resume": "pretrained_weights/none.pt"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "resume"]
    store = JobStore(redis_client)
    from shared.jobspec import TrainSpec
    record, _ = store.create(TrainSpec(**{**TRAIN, "max_steps": 2, "resume": "pretrained_weights/none.pt"}))
    from celery import Celery
    Celery(broker=control.redis_url).send_task("trainer.run_job", args=[record.id], queue="gpu")
    deadline = time.monotonic() + 60
    while store.get(record.id).state == "queued" and time.monotonic() < deadline:
        time.sleep(0.2)
    done = store.get(record.id)
    assert done.state == "failed" and "resume: pretrained_weights/none.pt does not exist" in done.reason
    # Fast means before anything was launched: no attempt at torchrun, no trainer output.
    kinds = [e.type for _, e in store.events(record.id)]
    assert not done.runner_pgid and "train_step" not in kinds and not done.log_tail, (done, kinds)
