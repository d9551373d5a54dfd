from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared import redis_keys
from shared.messages import CrawlRequest, CrawlResult, JobEvent, LoginState, MissingImage


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
