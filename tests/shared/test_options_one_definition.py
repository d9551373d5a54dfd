"""Every job option is defined once (shared/options.py): the command line, the job spec schema
and the trainer's settings are built from it and agree on names, defaults and bounds."""
from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from services.trainer.cli import build_parser
from services.trainer.commands.options_cli import flag_of
from services.trainer.index.config import IndexConfig
from services.trainer.predict.config import PredictConfig
from services.trainer.train.config import TrainConfig
from shared.jobspec import IndexSpec, PredictSpec, TrainSpec
from shared.options import IndexOptions, PredictOptions, TrainOptions

CASES = [("train", TrainOptions, TrainSpec, TrainConfig), ("predict", PredictOptions, PredictSpec, PredictConfig),
         ("index", IndexOptions, IndexSpec, IndexConfig)]


def _cli_actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


def _bounds(field) -> dict[str, object]:
    found = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt", "max_length", "min_length"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


@pytest.mark.parametrize("command, options, spec, config", CASES, ids=[c[0] for c in CASES])
def test_cli_spec_and_config_agree_on_every_option(command, options, spec, config):
    actions = _cli_actions(command)
    spec_schema = spec.model_json_schema()["properties"]
    assert options.model_fields, "no options?"
    for name, field in options.model_fields.items():
        # The command line: same name, no default of its own (the model's applies).
        assert name in actions, f"--{name} missing from cnclip {command}"
        action = actions[name]
        assert flag_of(name) in action.option_strings
        assert action.default is argparse.SUPPRESS, f"{flag_of(name)} carries its own default"
        # The job spec: same field, default and bounds.
        assert name in spec_schema, f"{name} missing from the {command} job spec"
        spec_field = spec.model_fields[name]
        assert spec_field.get_default(call_default_factory=True) == field.get_default(call_default_factory=True)
        assert _bounds(spec_field) == _bounds(field) and spec_field.annotation == field.annotation
        # The trainer's settings: same field, default and bounds.
        config_field = config.model_fields[name]
        assert config_field.get_default(call_default_factory=True) == field.get_default(call_default_factory=True)
        assert _bounds(config_field) == _bounds(field) and config_field.annotation == field.annotation


def test_defaults_reach_the_trainer_unchanged(tmp_path, monkeypatch):
    """A run from the command line, from a spec and from code gets the same values."""
    monkeypatch.setenv("CNCLIP_DATA_ROOT", str(tmp_path))
    (tmp_path / "d/train/imgs").mkdir(parents=True)
    (tmp_path / "d/train/pairs").mkdir()
    parser = build_parser(only="train")
    from services.trainer.commands.train import config_from

    from_cli = config_from(parser.parse_args(["train", "--train-data", str(tmp_path / "d/train")]))
    from_code = TrainConfig(train_data=str(tmp_path / "d/train"))
    from_spec = TrainConfig(**TrainSpec(train_data="d/train").resolved_options(tmp_path, job_id="j"))
    for name in TrainOptions.model_fields:
        assert getattr(from_cli, name) == getattr(from_code, name) == getattr(from_spec, name), name
    assert from_code.dsl_temperature == 1000.0 and from_code.max_epochs == 32


@pytest.mark.parametrize("bad, field", [
    ({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"), ({"wd": -1}, "wd"),
    ({"vision_model": "--resume"}, "vision_model"), ({"text_model": "bert"}, "text_model"),
    ({"max_steps": 5, "max_epochs": 2}, "max_epochs"), ({"batch_size": 0}, "batch_size"),
    ({"valid_step_interval": 3}, "valid_step_interval"), ({"online": "sometimes"}, "online"),
])
def test_spec_refuses_with_the_field_named(bad, field):
    with pytest.raises(ValidationError) as exc:
        TrainSpec(train_data="d/train", **bad)
    assert [e["loc"][0] for e in exc.value.errors()] == [field]


def test_cli_refuses_with_the_option_named(tmp_path, capsys):
    from services.trainer.cli import main

    code = main(["train", "--train-data", str(tmp_path), "--lr", "nan"])
    assert code == 2 and "--lr:" in capsys.readouterr().err
    code = main(["predict", "--mode", "ensemble", "--image-data", "i", "--text-data", "t", "--members", "a.pt"])
    assert code == 2 and "--members: mode 'ensemble' needs at least two" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["datasets/d/test_texts.jsonl", "stack/stack.env", "redis/dump.rdb",
                                    "crawler/cookies/x.json", "experiments"])
def test_prediction_output_only_where_outputs_belong(output):
    with pytest.raises(ValidationError) as exc:
        PredictSpec(image_data="datasets/d/lmdb/test", text_data="datasets/d/test_texts.jsonl",
                    resume="pretrained_weights/m.pt", output=output)
    assert "output" in {e["loc"][0] for e in exc.value.errors()}
    PredictSpec(image_data="datasets/d/lmdb/test", text_data="datasets/d/test_texts.jsonl",
                resume="pretrained_weights/m.pt", output="experiments/results/mine.jsonl")
