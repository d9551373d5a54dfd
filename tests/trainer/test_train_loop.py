"""The training loop in one process: gradient accumulation, freezing, weight decay groups,
logit-scale clamp, precisions, the online seam, resuming and checkpoint errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from services.trainer.cli import main
from services.trainer.train.config import TrainConfig
from services.trainer.train.data import Batch
from services.trainer.engine.distributed import DistEnv
from services.trainer.train.loop import Trainer
from services.trainer.train.run import build_trainer
from services.trainer.engine.step import MAX_LOGIT_SCALE, no_weight_decay
from services.trainer.train.online import NoOnline

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def make_config(data, tmp_path: Path, **overrides) -> TrainConfig:
    options = dict(
        train_data=data.lmdb("train"), val_data=data.lmdb("valid"), logs=tmp_path, name="run",
        vision_model="tiny", text_model="tiny", num_workers=0, valid_num_workers=0, batch_size=8,
        valid_batch_size=16, max_steps=4, precision="fp32", no_progress=True, warmup=1, lr=1e-3,
    )
    options.update(overrides)
    config = TrainConfig(**options)
    config.check()
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return config


def without_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def first_batches(trainer: Trainer, n: int) -> list[Batch]:
    batches = iter(trainer.train_data.epoch(0))
    return [next(batches) for _ in range(n)]


def merge(batches: list[Batch]) -> Batch:
    return Batch(torch.cat([b.images for b in batches]), torch.cat([b.input_ids for b in batches]),
                 torch.cat([b.attention_mask for b in batches]), sum((b.texts for b in batches), []),
                 sum((b.image_ids for b in batches), []), sum((b.text_ids for b in batches), []))


def test_accumulated_step_has_the_gradient_of_the_whole_batch(synthetic_data, tmp_path):
    single = build_trainer(make_config(synthetic_data, tmp_path, batch_size=8), CPU)
    accumulated = build_trainer(make_config(synthetic_data, tmp_path, batch_size=4, accum_freq=2), CPU)
    for trainer in (single, accumulated):
        without_dropout(trainer.model)
    assert all(torch.equal(a, b) for a, b in zip(single.model.state_dict().values(),
                                                 accumulated.model.state_dict().values()))
    halves = first_batches(accumulated, 2)
    out_single = single.train_step([merge(halves)])
    out_accumulated = accumulated.train_step(halves)
    assert out_single.loss == pytest.approx(out_accumulated.loss, rel=1e-5)
    assert out_single.samples == out_accumulated.samples == 8
    for (name, a), b in zip(single.model.named_parameters(), accumulated.model.parameters()):
        if a.grad is None:
            assert b.grad is None, name
            continue
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


def test_freeze_vision_keeps_the_image_tower(synthetic_data, tmp_path):
    trainer = build_trainer(make_config(synthetic_data, tmp_path, freeze_vision=True), CPU)
    vision_before = {k: v.clone() for k, v in trainer.model.vision_model.state_dict().items()}
    projection_before = trainer.model.visual_projection.weight.clone()
    text_before = trainer.model.text_projection.weight.clone()
    trainer.train_step(first_batches(trainer, 1))
    assert all(torch.equal(v, trainer.model.vision_model.state_dict()[k]) for k, v in vision_before.items())
    assert torch.equal(projection_before, trainer.model.visual_projection.weight)
    assert not torch.equal(text_before, trainer.model.text_projection.weight)
    trainable = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trainable for p in trainer.model.vision_model.parameters())


def test_weight_decay_groups_and_logit_scale_clamp(synthetic_data, tmp_path):
    trainer = build_trainer(make_config(synthetic_data, tmp_path, wd=0.5), CPU)
    exempt = no_weight_decay(trainer.model)
    assert "logit_scale" in exempt
    assert "text_model.encoder.layer.0.attention.output.LayerNorm.weight" in exempt
    assert "vision_model.post_layernorm.weight" in exempt
    assert "text_model.encoder.layer.0.attention.self.query.bias" in exempt
    assert "text_model.encoder.layer.0.attention.self.query.weight" not in exempt
    no_decay, decay = trainer.optimizer.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.5
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == exempt

    with torch.no_grad():
        trainer.model.logit_scale.fill_(10.0)
    trainer.train_step(first_batches(trainer, 1))
    assert trainer.model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)


@pytest.mark.parametrize("precision", ["amp", "bf16", "fp16"])
def test_reduced_precisions_take_finite_steps(synthetic_data, tmp_path, precision):
    trainer = build_trainer(make_config(synthetic_data, tmp_path, precision=precision), CPU)
    before = trainer.model.text_projection.weight.detach().clone()
    result = trainer.train_step(first_batches(trainer, 1))
    assert math.isfinite(result.loss)
    assert not torch.equal(before, trainer.model.text_projection.weight)
    if precision == "fp16":
        assert trainer.model.text_projection.weight.dtype == torch.float16


class RecordingHook(NoOnline):
    def __init__(self):
        super().__init__()
        self.calls = []
        self.before = None
        self.prefetched = []

    def prefetch(self, split, texts):
        assert not self.calls, "prefetch comes before any validation batch"
        self.prefetched.append((split, list(texts)))

    def before_eval(self, split, texts, *, epoch=None, train_step=None, batches=None):
        self.before = list(texts)
        self.position = (epoch, train_step, batches)

    def on_eval_batch(self, split, batch_index, batch):
        assert batch.input_ids.shape[0] == len(batch.texts) == batch.attention_mask.shape[0]
        self.calls.append((split, batch_index, list(batch.texts)))


def test_online_hook_sees_each_validation_batch_once(synthetic_data, tmp_path):
    hook = RecordingHook()
    trainer = build_trainer(make_config(synthetic_data, tmp_path), CPU, online=hook)
    result = trainer.validate(epoch=0)
    batches = trainer.valid_data.num_batches
    assert [c[1] for c in hook.calls] == list(range(batches))
    assert all(c[0] == "valid" and len(c[2]) == 16 for c in hook.calls)
    assert hook.before == [t for c in hook.calls for t in c[2]]
    assert hook.position == (1, trainer.step, batches)  # what the online budget is sized by
    valid_texts = {t["text"] for t in synthetic_data.manifest["texts"]["valid"]}
    assert set(hook.before) == valid_texts  # every query, padded by wrapping around
    assert result.texts == len(valid_texts)
    assert Path(result.predictions).is_file()


def test_the_validation_queries_are_prefetched_once_when_training_starts(synthetic_data, tmp_path):
    hook = RecordingHook()
    trainer = build_trainer(make_config(synthetic_data, tmp_path, max_steps=2, valid_step_interval=1,
                                  valid_epoch_interval=-1), CPU, online=hook)
    trainer.fit()
    assert hook.prefetched == [("valid", list(trainer.valid_data.rank_texts()))]
    assert len(hook.calls) == 2 * trainer.valid_data.num_batches  # two validations, one prefetch


def test_validation_writes_muge_predictions_that_chinese_clip_scores_the_same(synthetic_data, tmp_path):
    """The validation event's recall is the MUGE evaluator's number for the predictions file
    validation wrote, with the split's texts file as ground truth."""
    from cn_clip.eval import evaluation as original

    trainer = build_trainer(make_config(synthetic_data, tmp_path), CPU)
    result = trainer.validate(epoch=0)
    assert not list(Path(result.predictions).parent.glob("*.partial"))
    mean_recall, r1, r5, r10 = original.compute_score(str(synthetic_data.texts("valid")), result.predictions)
    assert (result.mr, result.r1, result.r5, result.r10) == (mean_recall, r1, r5, r10)


def test_resume_restores_position_and_reset_data_offset_starts_over(synthetic_data, tmp_path):
    first = build_trainer(make_config(synthetic_data, tmp_path, name="first", max_steps=3), CPU)
    first.fit()
    checkpoint = first.config.checkpoint_dir / "epoch_latest.pt"
    again = build_trainer(make_config(synthetic_data, tmp_path, name="second", max_steps=6, resume=checkpoint), CPU)
    assert again.step == 3
    assert all(len(s) > 0 for s in again.optimizer.state.values()) and again.optimizer.state
    restart = build_trainer(make_config(synthetic_data, tmp_path, name="third", max_steps=6, resume=checkpoint,
                                  reset_data_offset=True, reset_optimizer=True), CPU)
    assert restart.step == 0 and not restart.optimizer.state
    assert torch.equal(restart.model.logit_scale, first.model.logit_scale)
    # Without --resume, a run continues from its own latest checkpoint.
    auto = build_trainer(make_config(synthetic_data, tmp_path, name="first", max_steps=6), CPU)
    assert auto.step == 3


def test_epochs_and_steps(synthetic_data, tmp_path):
    trainer = build_trainer(make_config(synthetic_data, tmp_path, max_steps=None, max_epochs=2, batch_size=16), CPU)
    # 200 pairs in batches of 16: 13 batches (the last filled by wrapping) -> 13 steps an epoch.
    assert (trainer.steps_per_epoch, trainer.max_steps, trainer.max_epochs) == (13, 26, 2)
    trainer = build_trainer(make_config(synthetic_data, tmp_path, max_steps=20, batch_size=16, accum_freq=2), CPU)
    assert (trainer.steps_per_epoch, trainer.max_steps, trainer.max_epochs) == (6, 20, 4)


def _cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_wrong_shape_checkpoint_is_refused_with_the_mismatch(synthetic_data, tmp_path, tiny_checkpoint, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("text_projection"))
    payload["state_dict"][key] = torch.zeros(3, 5)
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    base = ["train", "--train-data", str(synthetic_data.lmdb("train")), "--logs", str(tmp_path), "--name", "bad",
            "--vision-model", "tiny", "--text-model", "tiny", "--num-workers", "0", "--max-steps", "1",
            "--precision", "fp32", "--device", "cpu", "--no-progress"]
    code, text = _cli(base + ["--resume", str(wrong)], capsys)
    assert code != 0
    assert "does not fit model tiny@tiny" in text and "text_projection" in text and "(5, 3)" in text
    assert not (tmp_path / "bad" / "checkpoints" / "epoch_latest.pt").exists()


def test_foreign_optimizer_state_needs_reset_optimizer(synthetic_data, tmp_path, tiny_checkpoint, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload.pop("optimizer_param_names")  # as Chinese-CLIP writes it
    foreign = tmp_path / "foreign.pt"
    torch.save(payload, foreign)
    base = ["train", "--train-data", str(synthetic_data.lmdb("train")), "--logs", str(tmp_path),
            "--vision-model", "tiny", "--text-model", "tiny", "--num-workers", "0", "--max-steps", "2",
            "--precision", "fp32", "--device", "cpu", "--no-progress", "--resume", str(foreign),
            "--valid-epoch-interval", "-1"]
    code, text = _cli(base + ["--name", "strict"], capsys)
    assert code == 1 and "optimizer state in" in text and "--reset-optimizer" in text
    code, text = _cli(base + ["--name", "fresh", "--reset-optimizer"], capsys)
    assert code == 0, text
    saved = torch.load(tmp_path / "fresh" / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert saved["step"] == 2


def test_augmented_training_images_vary(synthetic_data, tmp_path):
    trainer = build_trainer(make_config(synthetic_data, tmp_path, use_augment=True), CPU)
    first, again = trainer.train_data.pairs[0][0], trainer.train_data.pairs[0][0]
    assert first.shape == again.shape == (3, 64, 64)
    assert not torch.equal(first, again)
    plain = trainer.valid_data.pairs[0][0]
    assert torch.equal(plain, trainer.valid_data.pairs[0][0])  # validation is never augmented
    assert math.isfinite(trainer.train_step(first_batches(trainer, 1)).loss)


def test_gradient_checkpointing_gives_the_same_gradient(synthetic_data, tmp_path):
    plain = build_trainer(make_config(synthetic_data, tmp_path), CPU)
    checkpointed = build_trainer(make_config(synthetic_data, tmp_path, grad_checkpointing=True), CPU)
    assert checkpointed.model.text_model.encoder.gradient_checkpointing
    batch = first_batches(plain, 1)
    a, b = plain.train_step(batch), checkpointed.train_step(batch)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    for (name, p), q in zip(plain.model.named_parameters(), checkpointed.model.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
