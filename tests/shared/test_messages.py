from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared import redis_keys
from shared.messages import (
    EVENT_PAYLOADS,
    CrawlRequest,
    CrawlResult,
    Ensemble,
    EventError,
    EventPayload,
    InBatchAccuracy,
    JobEvent,
    LoginState,
    MissingImage,
    OnlineBatch,
    TrainStep,
    Validation,
)


def _result(images: list[bytes]) -> CrawlResult:
    return CrawlResult(
        request_id="r1", job_id="j1", split="valid", query="红色 T恤", normalized_query="红色 T恤",
        status="partial", rank=3, elapsed_s=1.5, images=images,
        missing=[MissingImage(url="http://x/1.jpg", reason="truncated JPEG")],
        image_urls=["http://x/0.jpg"],
    )


def test_crawl_result_round_trips_through_stream_fields_with_raw_image_bytes(redis_client):
    images = [b"\xff\xd8first\x00binary", b"\xff\xd8second"] + [bytes([i]) * 3 for i in range(10)]
    stream = redis_keys.crawl_results("j1", 0)
    redis_client.xadd(stream, _result(images).to_stream_fields())
    [(_, fields)] = redis_client.xrange(stream)
    back = CrawlResult.from_stream_fields(fields)
    assert back.images == images  # order kept past img9 -> img10 (numeric, not lexical)
    assert back.missing[0].reason == "truncated JPEG"
    assert back.status == "partial" and back.rank == 3


def test_crawl_result_json_never_carries_image_bytes():
    assert b"binary" not in _result([b"binary"]).to_stream_fields()["meta"]


def test_crawl_request_rejects_bad_fields_naming_them():
    with pytest.raises(ValidationError) as err:
        CrawlRequest(request_id="r", job_id="j", split="valid", query="q", n_images=0,
                     deadline="soon", reply_stream="s")
    text = str(err.value)
    assert "n_images" in text and "deadline" in text


def test_login_state_round_trips_through_a_redis_hash(redis_client):
    state = LoginState(rank=2, state="waiting_for_scan", detail="scan me", qr_updated_at=12.5)
    redis_client.hset(redis_keys.crawler_login(2), mapping=state.to_hash())
    back = LoginState.from_hash(redis_client.hgetall(redis_keys.crawler_login(2)))
    assert back == state


def test_login_state_rejects_unknown_state():
    with pytest.raises(ValidationError):
        LoginState(rank=0, state="sleeping")


def test_job_event_has_type_and_timestamp():
    event = JobEvent(type="train_step", data={"step": 3})
    assert event.ts > 0 and event.model_dump()["data"]["step"] == 3


# ---- job events -------------------------------------------------------------------------
# The fields every consumer (runner progress, charts, pages, clients) relies on, per event type.
EVENT_FIELDS = {
    "train_step": {"step", "total_steps", "epoch", "loss", "lr", "samples_per_s", "logit_scale",
                   "img2txt_acc", "txt2img_acc"},
    "validation": {"step", "epoch", "loss", "img2txt_acc", "txt2img_acc", "acc", "r1", "r5", "r10", "mr",
                   "texts", "images", "predictions"},
    "online": {"split", "batch", "pass_index", "image_index", "pairs_sha256", "queries", "pairs", "missing",
               "dropped_leaked", "dropped_disagreeing", "replay_pairs", "skipped_active", "steps", "wait_ms", "loss", "online_step"},
    "online_pass": {"split", "epoch", "pass_index", "queries", "pairs", "missing", "cache_hits", "dropped_leaked",
                    "dropped_disagreeing", "replay_pairs", "skipped_active", "source", "online_step", "wall_s", "steps"},
    "online_state": {"state", "ranks", "timeout_s", "message"},
    "checkpoint": {"path", "epoch", "step"},
    "ensemble": {"member", "checkpoint", "scores", "weight", "weights", "progress", "metrics", "equal_weights",
                 "equal_metrics"},
    "result": {"paths", "metrics", "steps"},
    "state": {"state", "reason"},
    "trainer_state": {"state", "reason"},
    "phase": {"name", "step", "total_steps", "epoch"},
    "log": {"level", "message"},
}


def test_every_event_type_has_one_model_with_its_documented_fields():
    assert {t: set(m.model_fields) for t, m in EVENT_PAYLOADS.items()} == EVENT_FIELDS
    assert all(issubclass(m, EventPayload) and m.type == t for t, m in EVENT_PAYLOADS.items())


def test_an_event_made_from_a_model_reads_back_as_that_model():
    payload = Validation(step=4, epoch=1, r1=12.5, acc=InBatchAccuracy(img2txt=0.5, txt2img=0.25))
    event = JobEvent.of(payload, job_id="j1")
    assert event.type == "validation" and event.job_id == "j1"
    assert event.data == {"step": 4, "epoch": 1, "r1": 12.5, "acc": {"img2txt": 0.5, "txt2img": 0.25}}
    back = JobEvent.model_validate_json(event.model_dump_json()).payload()
    assert isinstance(back, Validation) and back == payload
    assert back.headline() == {"step": 4, "epoch": 1, "r1": 12.5}


@pytest.mark.parametrize("type_, data, message", [
    ("train_step", {"step": 1, "loss": 0.5, "lrr": 1e-4}, "'train_step' has no field lrr"),
    ("validation", {"r1": "high"}, "r1"),
    ("online", {"missing": {"late": "many"}}, "missing"),
    ("nosuchtype", {}, "unknown event type 'nosuchtype'"),
])
def test_a_checked_event_names_what_does_not_fit(type_, data, message):
    with pytest.raises(EventError, match=message):
        JobEvent.checked(type_, data)


def test_reading_is_lenient_so_old_streams_stay_readable():
    unknown = JobEvent(type="custom_thing", data={"x": 1})
    assert unknown.payload() == {"x": 1}
    misfit = JobEvent(type="train_step", data={"step": "first"})
    assert misfit.payload() == {"step": "first"}
    older = JobEvent(type="online", data={"requested": 4, "queries": 4})
    payload = older.payload()
    assert isinstance(payload, OnlineBatch) and payload.queries == 4 and payload.model_extra == {"requested": 4}


def test_payload_helpers():
    step = TrainStep(step=3, total_steps=9, loss=0.5, samples_per_s=None)
    assert step.position() == {"step": 3, "total_steps": 9} and step.figures() == {"loss": 0.5}
    batch = OnlineBatch(queries=8, pairs=6, missing={"late": 1, "failed": 1}, wait_ms=12.5, loss=0.3)
    assert batch.counts() == {"queries": 8, "pairs": 6, "wait_ms": 12.5, "missing": 2}
    assert Ensemble(member=0).member_key == "0" and Ensemble(progress="done").member_key == "fused"
