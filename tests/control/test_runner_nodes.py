"""A two-node job end to end on one machine: two job runners (real Celery workers on one Redis)
each take one node's task; the nodes meet at a rendezvous on loopback (gloo, one process each),
train, learn online from a crawled-image cache filled beforehand and validate in step, and only
node 0 writes checkpoints. A node that dies midway ends the job as the runner's contract says,
never leaving it ``running`` nor any of its processes alive."""
from __future__ import annotations

import json
import time

import psutil
import pytest

from shared.jobs import JobStore
from tests.control.conftest import ControlServer, RunnerWorker
from tests.control.test_runner import (DATASET, TRAIN, no_process_of, shared_root, sse_events,  # noqa: F401
                                       wait_for, wait_for_event)
from tests.fixtures_online import fill_cache

pytestmark = pytest.mark.slow
TWO_NODES = {**TRAIN, "nnodes": 2, "nproc_per_node": 1}
ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture()
def two_nodes(redis_url, shared_root):  # noqa: F811
    control = ControlServer(redis_url, shared_root).start()
    runners = [RunnerWorker(redis_url, shared_root).start() for _ in range(2)]
    yield control, runners
    for runner in runners:
        runner.stop()
    control.stop()


def _logs(runners: list[RunnerWorker]) -> str:
    return "\n".join(f"--- runner {i}:\n{r.log_tail()}" for i, r in enumerate(runners))


def _node_zero(store: JobStore, job_id: str, runners: list[RunnerWorker]) -> RunnerWorker:
    """The runner that holds the job's record (node 0): its pid is the record's."""
    pid = store.get(job_id).runner_pid
    return next(r for r in runners if r.proc.pid == pid)


def _crash(runner: RunnerWorker) -> None:
    """The node's machine dies: its runner and every process under it, at once, by SIGKILL."""
    root = psutil.Process(runner.proc.pid)
    for proc in [*root.children(recursive=True), root]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    runner.proc.wait()


def _no_process_left(job_id: str, timeout: float = 30.0) -> bool:
    """No process of the job is alive (a node's trainer may take a moment to exit after node 0
    has recorded the end)."""
    deadline = time.monotonic() + timeout
    while not no_process_of(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return no_process_of(job_id)


def _node_logs(store: JobStore, job_id: str, until: str, timeout: float = 30.0) -> list[str]:
    """The runners' own log lines of a job, once one starting with ``until`` is among them (a
    node's runner may report its end just after node 0 has ended the job)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = [e.data["message"] for _, e in store.events(job_id)
                if e.type == "log" and e.data.get("level") != "output"]
        if any(m.startswith(until) for m in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def test_two_nodes_train_learn_online_and_validate_in_step(two_nodes, shared_root, redis_client):  # noqa: F811
    control, runners = two_nodes
    texts = [json.loads(line)["text"] for line in
             (shared_root / DATASET / "valid_texts.jsonl").read_text(encoding="utf-8").splitlines()]
    fill_cache(shared_root / "online_cache", "valid", texts, k=2)
    spec = {**TWO_NODES, "max_steps": 2, "valid_batch_size": 8, "seed": 7, "online": "cache",
            "online_images": 2, "online_wait_s": 30, "online_dedupe_gallery": False,
            "online_step_ratio": 2.0}  # two training steps earn four online steps
    with control.client() as client:
        job = client.post("/jobs/train", json=spec).json()
        done = wait_for(client, job["id"], ENDED, timeout=480)
        assert done["state"] == "succeeded", (done, _logs(runners))
        assert done["progress"]["step"] == 2 and done["attempts"] == 1
    events = sse_events(control, job["id"])
    assert [e["data"]["state"] for e in events if e["type"] == "state"] == ["queued", "running", "succeeded"]
    assert [e["data"]["step"] for e in events if e["type"] == "train_step"] == [1, 2]
    # Validation gathers both nodes' halves of the split: each node validated its own.
    validations = [e["data"] for e in events if e["type"] == "validation"]
    assert validations and all(v["texts"] == len(texts) for v in validations), validations
    online = [e["data"] for e in events if e["type"] == "online"]
    assert online and all(o["pairs"] > 0 for o in online), online
    assert sum(o["steps"] for o in online) == 4
    # Node 1 ran its own trainer to a clean end (its runner says so in the job's stream) and
    # wrote no checkpoint: every checkpoint file is written once, by node 0.
    logs = _node_logs(JobStore(redis_client), job["id"], until="node 1 ended")
    assert any(m.startswith("node 1 launch: ") and "--node-rank=1" in m for m in logs), logs
    assert "node 1 ended with exit status 0" in logs, logs
    saved = [e["data"]["path"] for e in events if e["type"] == "checkpoint"]
    checkpoints = shared_root / "experiments" / job["id"] / "checkpoints"
    assert saved and len(saved) == len(set(saved)), saved
    assert sorted(str(p) for p in checkpoints.iterdir()) == sorted(saved)
    assert _no_process_left(job["id"])


def test_a_node_that_dies_midway_fails_the_job_and_leaves_nothing_running(two_nodes, redis_client):
    control, runners = two_nodes
    store = JobStore(redis_client)
    with control.client() as client:
        job = client.post("/jobs/train", json={**TWO_NODES, "max_steps": 100000, "val_data": None}).json()
        wait_for_event(client, job["id"], "train_step", timeout=480)  # both nodes are in step
        holder = _node_zero(store, job["id"], runners)
        follower = next(r for r in runners if r is not holder)
        _crash(follower)
        done = wait_for(client, job["id"], ENDED | {"queued"}, timeout=240)
    # The trainer on node 0 loses its peer and exits with an error; the holder records it.
    assert done["state"] == "failed", (done, _logs(runners))
    assert "trainer exited" in done["reason"], done["reason"]
    assert _no_process_left(job["id"]), "a process of the failed job is still alive"
    assert store.in_state("running") == []


def test_when_node_zero_dies_the_job_is_requeued_for_both_nodes_and_resumes(
        two_nodes, redis_url, shared_root, redis_client):  # noqa: F811
    control, runners = two_nodes
    store = JobStore(redis_client)
    with control.client() as client:
        job = client.post("/jobs/train", json={**TWO_NODES, "max_steps": 40, "val_data": None}).json()
        wait_for_event(client, job["id"], "train_step", timeout=480)
        _crash(_node_zero(store, job["id"], runners))
        # The other node's runner finds the record holder gone and hands the job back with a
        # task per node; a fresh runner takes the dead one's place.
        runners.append(RunnerWorker(redis_url, shared_root).start())
        done = wait_for(client, job["id"], ENDED, timeout=480)
    assert done["state"] == "succeeded", (done, _logs(runners))
    assert done["attempts"] == 2 and done["progress"]["step"] == 40
    states = [e.data for _, e in store.events(job["id"]) if e.type == "state"]
    assert [s["state"] for s in states] == ["queued", "running", "queued", "running", "succeeded"]
    assert "died mid-job" in states[2]["reason"]
    assert _no_process_left(job["id"])
