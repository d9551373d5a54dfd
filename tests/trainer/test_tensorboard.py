"""``--report-to tensorboard``: a training run writes its figures and options where TensorBoard
reads them, read back here with TensorBoard's own reader; nothing is written when it is off."""
from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from services.trainer.engine.distributed import DistEnv
from services.trainer.train.run import make_sink, run_training
from services.trainer.train.tensorboard import TensorBoardSink
from tests.fixtures_online import fill_cache
from tests.trainer.test_train_loop import make_config


def _events(path) -> dict[str, list[dict]]:
    by_type: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        by_type.setdefault(event["type"], []).append(event["data"])
    return by_type


def _read(log_dir) -> EventAccumulator:
    reader = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    reader.Reload()
    return reader


def _values(reader: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(s.step, s.value) for s in reader.Scalars(tag)]


def test_a_run_writes_the_scalars_its_events_carry_and_its_options(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts, k=2)
    config = make_config(synthetic_data, tmp_path, max_steps=4, log_interval=1, valid_step_interval=2,
                         online="cache", online_cache_dir=str(tmp_path / "cache"), online_images=2,
                         report_to="tensorboard", events=str(tmp_path / "events.jsonl"))
    assert run_training(config) == 0
    events = _events(tmp_path / "events.jsonl")
    reader = _read(config.run_dir / "tensorboard")
    tags = set(reader.Tags()["scalars"])

    steps = events["train_step"]
    for name in ("loss", "lr", "samples_per_s"):
        assert _values(reader, f"train/{name}") == [(e["step"], pytest.approx(e[name], rel=1e-6)) for e in steps]
    validations = [v for v in events["validation"] if v.get("r1") is not None]
    assert len(validations) >= 2
    for name in ("r1", "r5", "r10", "mr", "loss"):
        assert _values(reader, f"val/{name}") == [(v["step"], pytest.approx(v[name], rel=1e-6)) for v in validations]
    batches = events["online"]
    assert batches and {"online/batch/pairs", "online/batch/missing", "online/batch/loss"} <= tags
    assert [v for _, v in _values(reader, "online/batch/pairs")] == [b["pairs"] for b in batches]
    assert [v for _, v in _values(reader, "online/batch/missing")] == \
        [sum((b.get("missing") or {}).values()) for b in batches]
    passes = events["online_pass"]
    assert [v for _, v in _values(reader, "online/pass/pairs")] == [p["pairs"] for p in passes]
    assert len(_values(reader, "online/pass/missing")) == len(passes)

    # The options as hyperparameters (the HParams tab), with their values.
    content = reader.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(1e-3)
    assert hparams["online"].string_value == "cache"
    assert hparams["vision_model"].string_value == "tiny"
    assert hparams["report_to"].string_value == "tensorboard"
    assert hparams["val_data"].string_value == str(synthetic_data.lmdb("valid"))


def test_nothing_is_written_when_the_option_is_off_or_on_other_ranks(synthetic_data, tmp_path):
    off = make_config(synthetic_data, tmp_path, max_steps=2, name="off")
    assert off.report_to == "none"
    assert run_training(off) == 0
    assert (off.run_dir / "checkpoints").is_dir() and not (off.run_dir / "tensorboard").exists()

    on = make_config(synthetic_data, tmp_path, max_steps=2, name="rank1", report_to="tensorboard")
    other_rank = DistEnv(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), backend=None)
    sink = make_sink(on, other_rank)
    sink.emit("train_step", step=1, loss=1.0)
    sink.close()
    assert not (on.run_dir / "tensorboard").exists()
    main = make_sink(on, DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend=None))
    assert any(isinstance(s, TensorBoardSink) for s in main.sinks)
    main.close()
