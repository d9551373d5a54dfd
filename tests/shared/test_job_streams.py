"""Job event streams in a real Redis: one event is capped in size, a job's stream in bytes (its
oldest events go first), a finished job's stream expires, and a deleted job leaves nothing."""
from __future__ import annotations

import json

import pytest

from shared import redis_keys
from shared.jobs import EVENT_MAX_BYTES, FINISHED_EVENTS_TTL_S, InvalidTransition, JobStore
from shared.jobspec import TrainSpec
from shared.messages import JobEvent


def _stream_bytes(client, job_id: str) -> int:
    return sum(len(fields[b"event"]) for _, fields in client.xrange(redis_keys.job_events(job_id)))


def test_one_huge_event_is_cut_to_the_event_cap(redis_client):
    store = JobStore(redis_client)
    record, _ = store.create(TrainSpec(train_data="d", max_steps=1))
    store.append_event(record.id, JobEvent(type="log", data={"level": "error", "message": "x" * 50_000_000}))
    (_, event), = [e for e in store.events(record.id) if e[1].type == "log"]
    assert event.data["truncated"] is True and event.data["bytes"] > 50_000_000
    assert event.data["level"] == "error" and event.data["preview"].startswith('{"level"')
    assert _stream_bytes(redis_client, record.id) < 2 * EVENT_MAX_BYTES


def test_a_jobs_stream_is_bounded_in_bytes_keeping_the_newest(redis_client):
    store = JobStore(redis_client, stream_max_bytes=200_000)
    record, _ = store.create(TrainSpec(train_data="d", max_steps=1))
    for batch in range(50):
        store.append_events(record.id, [JobEvent(type="train_step", data={"step": batch * 10 + i, "pad": "p" * 1000})
                                        for i in range(10)])
    total = _stream_bytes(redis_client, record.id)
    assert 150_000 < total <= 200_000 + 2000, total  # the state event of create is not counted
    assert int(redis_client.get(redis_keys.job_events_bytes(record.id))) <= 200_000
    steps = [e.data["step"] for _, e in store.events(record.id) if e.type == "train_step"]
    assert steps[-1] == 499 and steps == list(range(steps[0], 500))  # the oldest went first


def test_finished_jobs_streams_expire_and_deleted_jobs_leave_nothing(redis_client):
    store = JobStore(redis_client)
    record, _ = store.create(TrainSpec(train_data="d", max_steps=1), idempotency_key="k-1")
    store.append_event(record.id, JobEvent(type="log", data={"level": "info", "message": "hi"}))
    assert redis_client.ttl(redis_keys.job_events(record.id)) == -1
    with pytest.raises(InvalidTransition):
        store.delete(record.id)  # not finished
    store.transition(record.id, "cancelled")
    assert 0 < redis_client.ttl(redis_keys.job_events(record.id)) <= FINISHED_EVENTS_TTL_S
    assert store.delete(record.id) == "cancelled"
    prefix = redis_keys.job(record.id)
    assert not [k for k in redis_client.scan_iter(prefix + "*")]
    assert redis_client.zscore(redis_keys.jobs_index(), record.id) is None
    assert redis_client.get(redis_keys.idempotency("k-1")) is None
    assert json.loads(json.dumps(store.counts())) == {s: 0 for s in store.counts()}
