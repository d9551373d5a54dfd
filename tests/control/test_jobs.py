from __future__ import annotations

import json
import threading

import pytest

from shared import redis_keys
from shared.jobs import IdempotencyConflict, InvalidTransition, JobNotFound, JobRecord, JobStore
from shared.jobspec import PredictSpec, TrainSpec
from shared.messages import JobEvent


@pytest.fixture()
def store(redis_client):
    return JobStore(redis_client)


def test_create_writes_record_index_and_state_event(store):
    record, created = store.create(TrainSpec(train_data="d/train", max_steps=3))
    assert created and record.state == "queued"
    again = store.get(record.id)
    assert again.spec.train_data == "d/train" and again.kind == "train"
    assert isinstance(again.spec, TrainSpec)
    assert store.ids() == [record.id]
    events = store.events(record.id)
    assert [(e.type, e.data["state"]) for _, e in events] == [("state", "queued")]


def test_a_record_written_before_specs_carried_their_kind_still_reads(store, redis_client):
    record, _ = store.create(PredictSpec(mode="single", image_data="i", text_data="t", resume="m.pt"))
    spec = json.loads(redis_client.hget(redis_keys.job(record.id), "spec"))
    assert spec.pop("kind") == "predict"
    redis_client.hset(redis_keys.job(record.id), "spec", json.dumps(spec))
    again = store.get(record.id)
    assert isinstance(again.spec, PredictSpec) and again.spec.resume == "m.pt"


def test_a_record_whose_kinds_disagree_is_refused(store):
    record, _ = store.create(TrainSpec(train_data="d"))
    data = record.model_dump(mode="json")
    data["kind"] = "predict"
    with pytest.raises(ValueError, match="a predict job cannot hold a train spec"):
        JobRecord.model_validate(data)


def test_idempotency_key_returns_the_first_job(store):
    spec = PredictSpec(mode="single", image_data="i", text_data="t", resume="m.pt", idempotency_key="abc")
    first, created = store.create(spec)
    second, created_again = store.create(spec)
    assert created and not created_again and second.id == first.id
    assert len(store.ids()) == 1
    with pytest.raises(IdempotencyConflict):
        store.create(spec.model_copy(update={"top_k": 5}))


def test_state_machine(store):
    record, _ = store.create(TrainSpec(train_data="d"))
    with pytest.raises(InvalidTransition):
        store.transition(record.id, "succeeded")  # queued jobs cannot succeed
    running = store.transition(record.id, "running", runner_host="h", runner_pid=1)
    assert running.state == "running" and running.started_at and running.runner_pid == 1
    done = store.transition(record.id, "failed", reason="boom", log_tail=["a", "b"])
    assert done.reason == "boom" and done.finished_at and done.log_tail == ["a", "b"]
    with pytest.raises(InvalidTransition) as exc:
        store.transition(record.id, "running")
    assert exc.value.current == "failed"
    states = [e.data["state"] for _, e in store.events(record.id) if e.type == "state"]
    assert states == ["queued", "running", "failed"]
    with pytest.raises(JobNotFound):
        store.transition("nope", "running")


def test_only_one_of_racing_transitions_wins(store):
    record, _ = store.create(TrainSpec(train_data="d"))
    wins, barrier = [], threading.Barrier(8)

    def claim(i):
        barrier.wait()
        try:
            store.transition(record.id, "running", runner_pid=i)
            wins.append(i)
        except InvalidTransition:
            pass

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get(record.id).runner_pid == wins[0]


def test_cancel_queued_is_immediate_and_running_is_flagged(store, redis_client):
    queued, _ = store.create(TrainSpec(train_data="d"))
    assert store.request_cancel(queued.id).state == "cancelled"
    running, _ = store.create(TrainSpec(train_data="d"))
    store.transition(running.id, "running")
    flagged = store.request_cancel(running.id)
    assert flagged.state == "running" and flagged.cancel_requested
    assert store.cancel_requested(running.id)
    assert redis_client.exists(redis_keys.job_cancel(running.id))
    with pytest.raises(InvalidTransition):
        store.request_cancel(queued.id)


def test_update_only_while_in_state(store):
    record, _ = store.create(TrainSpec(train_data="d"))
    assert not store.update(record.id, progress={"step": 1})
    store.transition(record.id, "running")
    assert store.update(record.id, progress={"step": 2})
    assert store.get(record.id).progress == {"step": 2}


def test_events_after_and_counts(store):
    record, _ = store.create(TrainSpec(train_data="d"))
    first = store.append_event(record.id, JobEvent(type="train_step", data={"step": 1}))
    store.append_event(record.id, JobEvent(type="train_step", data={"step": 2}))
    later = store.events(record.id, after=first)
    assert [e.data["step"] for _, e in later] == [2]
    assert all(e.job_id == record.id for _, e in later)
    other, _ = store.create(TrainSpec(train_data="d"))
    store.transition(other.id, "cancelled")
    assert store.counts() == {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert [r.id for r in store.list(state="cancelled")] == [other.id]
