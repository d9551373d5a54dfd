from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shared.jobspec import PathOutsideDataRoot, PredictSpec, TrainSpec, resolve_under, spec_from_json


def _error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "a/../../b", "~/x", "", ".", "a\\b"])
def test_paths_must_stay_inside_the_data_root(path):
    with pytest.raises(ValidationError) as exc:
        TrainSpec(train_data=path)
    assert "train_data" in _error_fields(exc.value)


def test_symlink_out_of_the_data_root_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "datasets").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "datasets" / "link")
    spec = TrainSpec(train_data="datasets/link")
    with pytest.raises(PathOutsideDataRoot):
        resolve_under(root, spec.train_data)
    assert any("outside the data root" in p for p in spec.missing_inputs(root))


def test_missing_inputs_are_named(tmp_path):
    (tmp_path / "datasets/d/lmdb/train").mkdir(parents=True)
    spec = TrainSpec(train_data="datasets/d/lmdb/train", val_data="datasets/d/lmdb/valid",
                     resume="pretrained_weights/none.pt")
    problems = spec.missing_inputs(tmp_path)
    assert [p.split(":")[0] for p in problems] == ["val_data", "resume"]


def test_cross_field_rules_name_the_field():
    with pytest.raises(ValidationError) as exc:
        TrainSpec(train_data="d/train", max_steps=5, max_epochs=2)
    assert _error_fields(exc.value) == {"max_epochs"}
    with pytest.raises(ValidationError) as exc:
        PredictSpec(mode="single", image_data="i", text_data="t")
    assert _error_fields(exc.value) == {"resume"}
    with pytest.raises(ValidationError) as exc:
        PredictSpec(mode="ensemble", image_data="i", text_data="t", members=["a.pt", "b.pt"], weights=[1.0])
    assert _error_fields(exc.value) == {"weights"}
    with pytest.raises(ValidationError) as exc:
        PredictSpec(mode="ensemble-last", members=["a.npy", "b.npy"], online="live")
    assert _error_fields(exc.value) == {"online"}
    with pytest.raises(ValidationError) as exc:
        TrainSpec(train_data="d", unknown_option=1)
    assert _error_fields(exc.value) == {"unknown_option"}


def test_fingerprint_ignores_only_the_idempotency_key():
    a = TrainSpec(train_data="d", idempotency_key="k1")
    assert a.fingerprint() == TrainSpec(train_data="d", idempotency_key="k2").fingerprint()
    assert a.fingerprint() != TrainSpec(train_data="d", lr=1e-4).fingerprint()


def test_round_trip_through_json():
    spec = PredictSpec(mode="ensemble", image_data="i", text_data="t", members=["a", "b"], weights=[0.3, 0.7])
    assert spec_from_json(spec.model_dump_json()) == spec


def test_train_options_resolve_into_the_trainers_settings(tmp_path):
    from services.trainer.train.config import TrainConfig

    spec = TrainSpec(train_data="datasets/d/lmdb/train", val_data="datasets/d/lmdb/valid",
                     max_steps=7, lr=2e-4, use_augment=True, freeze_vision=True, online="cache",
                     resume="pretrained_weights/base.pt", reset_optimizer=True, loss="dsl",
                     dsl_temperature=1000.0, save_step_frequency=3, valid_step_interval=2,
                     vision_model="tiny", text_model="tiny", precision="fp32", attn_implementation="eager")
    config = TrainConfig(**spec.resolved_options(tmp_path, job_id="job1", events=tmp_path / "ev.jsonl"))
    assert config.train_data == str(tmp_path / "datasets/d/lmdb/train")
    assert config.val_data == str(tmp_path / "datasets/d/lmdb/valid")
    assert config.name == "job1" and config.logs == str(tmp_path / "experiments")
    assert (config.max_steps, config.lr, config.use_augment, config.freeze_vision) == (7, 2e-4, True, True)
    assert (config.online, config.loss, config.dsl_temperature) == ("cache", "dsl", 1000.0)
    assert config.resume == str(tmp_path / "pretrained_weights/base.pt") and config.reset_optimizer
    assert (config.save_step_frequency, config.valid_step_interval) == (3, 2)
    assert (config.vision_model, config.precision, config.attn_implementation) == ("tiny", "fp32", "eager")
    assert config.events == str(tmp_path / "ev.jsonl") and config.no_progress
    resumed = TrainConfig(**spec.resolved_options(tmp_path, job_id="job1", resume_override=tmp_path / "latest.pt"))
    assert resumed.resume == str(tmp_path / "latest.pt") and not resumed.reset_optimizer


def test_predict_options_resolve_into_the_predictors_settings(tmp_path):
    from services.trainer.predict.config import PredictConfig

    single = PredictSpec(mode="single", image_data="d/lmdb/test", text_data="d/test_texts.jsonl",
                         resume="resume/model-1.pt", online="live", online_max_epochs=50,
                         vision_model="tiny", text_model="tiny")
    config = PredictConfig(**single.resolved_options(tmp_path, job_id="j", events=tmp_path / "e"))
    assert (config.mode, config.online, config.online_max_epochs) == ("single", "live", 50)
    assert config.resume == str(tmp_path / "resume/model-1.pt")
    assert config.output == str(tmp_path / "experiments/results/j_predictions.jsonl")
    assert (config.img_batch_size, config.text_batch_size, config.num_workers) == (64, 64, 0)
    assert config.online_cache_dir == str(tmp_path / "online_cache") and config.score_dir == str(tmp_path / "npy_save")
    ensemble = PredictSpec(mode="ensemble", image_data="d/lmdb/test", text_data="d/t.jsonl",
                           members=["resume/model-1.pt", "resume/model-2.pt"], weights=[0.25, 0.75],
                           score_dir="npy_save", save_scores=True, output="experiments/results/e.jsonl")
    config = PredictConfig(**ensemble.resolved_options(tmp_path, job_id="j"))
    assert config.members == [str(tmp_path / "resume/model-1.pt"), str(tmp_path / "resume/model-2.pt")]
    assert config.weights == [0.25, 0.75] and config.save_scores
    last = PredictSpec(mode="ensemble-last", image_data="d/lmdb/test", text_data="d/t.jsonl",
                       score_dir="npy_save_last")
    config = PredictConfig(**last.resolved_options(tmp_path, job_id="j"))
    assert config.mode == "ensemble-last" and config.score_dir == str(tmp_path / "npy_save_last")


def test_torchrun_args():
    one = TrainSpec(train_data="d", nproc_per_node=4)
    assert one.torchrun_args() == ["--nnodes=1", "--nproc-per-node=4", "--standalone"]
    two = TrainSpec(train_data="d", nnodes=2, nproc_per_node=8)
    assert two.torchrun_args(node_rank=1, master_addr="10.0.0.5", master_port=29555) == [
        "--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--master-addr=10.0.0.5", "--master-port=29555"]


def test_index_options_resolve_into_the_index_builders_settings(tmp_path):
    from services.trainer.index.config import IndexConfig
    from shared.jobspec import IndexSpec

    spec = IndexSpec(image_data="d/lmdb/test", resume="experiments/run/checkpoints/epoch_latest.pt",
                     index_kind="ivf", ivf_lists=8, vision_model="tiny", text_model="tiny")
    again = spec_from_json(spec.model_dump_json())
    assert isinstance(again, IndexSpec) and again == spec
    config = IndexConfig(**spec.resolved_options(tmp_path, job_id="j1", events=tmp_path / "e"))
    assert config.image_data == str(tmp_path / "d/lmdb/test")
    assert config.target == tmp_path / "experiments" / "j1" / "index"
    named = IndexSpec(image_data="d", resume="c.pt", name="shop-online")
    assert IndexConfig(**named.resolved_options(tmp_path, job_id="j2")).target == \
        tmp_path / "experiments" / "shop-online" / "index"
    assert [p.split(":")[0] for p in spec.missing_inputs(tmp_path)] == ["image_data", "resume"]


def test_an_ensemble_index_job_names_its_members_under_the_data_root(tmp_path):
    from services.trainer.index.config import IndexConfig
    from shared.jobspec import IndexSpec

    spec = IndexSpec(image_data="d", members=["runs/a.pt", "runs/b.pt"], weights=[3, 1])
    again = spec_from_json(spec.model_dump_json())
    assert isinstance(again, IndexSpec) and again == spec
    config = IndexConfig(**spec.resolved_options(tmp_path, job_id="j3"))
    assert config.checkpoints == [str(tmp_path / "runs/a.pt"), str(tmp_path / "runs/b.pt")]
    assert config.resume is None and config.weights == [3, 1]
    for bad, field in (({"members": ["runs/a.pt", "/etc/passwd"]}, "members"), ({"weights": [1]}, "weights"),
                       ({"resume": "c.pt"}, "members")):
        with pytest.raises(ValidationError) as exc:
            IndexSpec(**{"image_data": "d", "members": ["runs/a.pt", "runs/b.pt"], **bad})
        assert field in _error_fields(exc.value)


@pytest.mark.parametrize("bad, field", [
    ({"image_data": "../x"}, "image_data"), ({"resume": "/etc/passwd"}, "resume"),
    ({"index_kind": "annoy"}, "index_kind"), ({"ivf_probe": 4}, "ivf_probe"), ({"name": "../up"}, "name"),
])
def test_index_spec_refuses_with_the_field_named(bad, field):
    from shared.jobspec import IndexSpec

    with pytest.raises(ValidationError) as exc:
        IndexSpec(**{"image_data": "d", "resume": "c.pt", **bad})
    assert field in _error_fields(exc.value)
