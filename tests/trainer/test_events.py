from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from services.trainer.train.events import JsonLinesSink, MultiSink, NullSink, TqdmSink, plain
from shared.messages import EventError, JobEvent


def test_json_lines_are_job_events_visible_before_close(tmp_path):
    path = tmp_path / "sub" / "events.jsonl"
    sink = JsonLinesSink(path, job_id="job-1")
    sink.emit("train_step", step=3, total_steps=10, loss=torch.tensor(0.25), lr=np.float32(1e-4),
              img2txt_acc=torch.tensor(0.5))
    # A tailing reader sees the line while the sink is still open.
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    sink.emit("validation", step=3, r1=float("nan"), predictions=tmp_path, acc={"img2txt": np.float64(0.5)})
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first)[0] == "type"
    event = JobEvent.model_validate(first)
    assert event.type == "train_step" and event.job_id == "job-1"
    assert event.data["step"] == 3 and event.data["loss"] == 0.25
    assert math.isclose(event.data["lr"], 1e-4, rel_tol=1e-6)
    assert event.data["img2txt_acc"] == 0.5
    second = JobEvent.model_validate_json(lines[1])
    assert second.data["r1"] is None and second.data["predictions"] == str(tmp_path)
    assert second.data["acc"] == {"img2txt": 0.5}
    assert second.ts >= event.ts > 0


def test_plain_converts_nested_values():
    assert plain({"a": (torch.tensor([1, 2]), float("inf"))}) == {"a": [[1, 2], None]}


def test_tqdm_sink_draws_only_on_a_terminal():
    quiet = io.StringIO()
    sink = TqdmSink(stream=quiet)
    sink.emit("train_step", step=1, total_steps=4, loss=1.0)
    sink.close()
    assert quiet.getvalue() == ""

    shown = io.StringIO()
    sink = TqdmSink(stream=shown, force=True)
    sink.emit("train_step", step=2, total_steps=4, epoch=0, loss=0.5, lr=1e-3)
    sink.emit("validation", step=2, loss=0.4, r1=12.5)
    sink.close()
    text = shown.getvalue()
    assert "2/4" in text and "loss=0.5" in text
    assert "validation @ step 2" in text and "r1=12.5" in text


def test_multi_sink_fans_out(tmp_path):
    a, b = JsonLinesSink(tmp_path / "a"), JsonLinesSink(tmp_path / "b")
    sink = MultiSink(a, NullSink(), b)
    sink.emit("log", level="info", message="hello")
    sink.close()
    for name in "ab":
        assert JobEvent.model_validate_json((tmp_path / name).read_text()).data["message"] == "hello"


def test_an_event_that_does_not_fit_its_model_is_refused_where_it_is_emitted(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = JsonLinesSink(path)
    with pytest.raises(EventError, match="'train_step' has no field los$"):
        sink.emit("train_step", step=1, los=0.5)
    with pytest.raises(EventError, match="step"):
        sink.emit("train_step", step="first")
    with pytest.raises(EventError, match="unknown event type 'progress'"):
        sink.emit("progress", step=1)
    sink.emit("train_step", step=1, loss=0.5)
    sink.close()
    assert [json.loads(line)["data"] for line in path.read_text().splitlines()] == [{"step": 1, "loss": 0.5}]
