"""The online learner through the real training loop and prediction, in cache mode (the
images the shop serves, cached beforehand): a step per validation batch on (crawled image,
query) pairs, missing queries left out and counted, test-time adaptation saved in the
Chinese-CLIP format."""
from __future__ import annotations

import json

import torch

from services.trainer.cli import main
from services.trainer.model.checkpoint import read_checkpoint
from services.trainer.engine.distributed import DistEnv
from services.trainer.train.events import JsonLinesSink
from services.trainer.train.run import build_trainer
from tests.fixtures_online import fill_cache
from tests.trainer.test_train_loop import make_config

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
# The prototype's online learning (one step per batch on picture 0 / pass mod K, nothing else):
# still reachable with options, and what the tests of the mechanics below check.
PROTOTYPE = dict(online_schedule="validation", online_step_ratio=None, online_batch_steps=1, online_cycle_images=False, online_keep_images=None, online_replay=0.0,
                 online_crawl_share=None)
PROTOTYPE_CLI = ["--online-schedule", "validation", "--online-step-ratio", "none", "--online-batch-steps", "1", "--online-cycle-images", "off", "--online-keep-images", "none",
                 "--online-replay", "0", "--online-interpolate", "1", "--online-crawl-share", "none"]


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_validation_pass_steps_once_per_batch_on_cached_pictures(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    left_out = set(texts[:3])
    fill_cache(tmp_path / "cache", "valid", texts, skip=left_out)
    events = tmp_path / "events.jsonl"
    config = make_config(synthetic_data, tmp_path, online="cache", online_cache_dir=str(tmp_path / "cache"),
                         online_dedupe_gallery=False, **PROTOTYPE)
    sink = JsonLinesSink(events)
    trainer = build_trainer(config, CPU, sink)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.validate(epoch=0)
    trainer.save("epoch1.pt", 1)
    trainer.close()
    sink.close()
    online = [e["data"] for e in _events(events) if e["type"] == "online"]
    assert [o["batch"] for o in online] == list(range(trainer.valid_data.num_batches))
    assert all(o["pairs"] > 0 and o["loss"] is not None for o in online)
    assert sum(o["missing"].get("not_cached", 0) for o in online) >= len(left_out)
    assert sum(o["pairs"] + sum(o["missing"].values()) for o in online) == sum(o["queries"] for o in online)
    assert trainer.online.online_steps == len(online)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    passes = [e["data"] for e in _events(events) if e["type"] == "online_pass"]
    assert len(passes) == 1 and passes[0]["steps"] == len(online)
    assert read_checkpoint(config.checkpoint_dir / "epoch1.pt")["state_dict"]  # still Chinese-CLIP's format
    assert torch.load(config.checkpoint_dir / "epoch1.pt", weights_only=False)["online_steps"] == len(online)


def test_online_lr_steps_at_its_own_rate_and_gives_the_schedule_its_rate_back(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts)
    changed = {}
    for online_lr in (None, 1e-3):
        config = make_config(synthetic_data, tmp_path / str(online_lr), online="cache",
                             online_cache_dir=str(tmp_path / "cache"), online_dedupe_gallery=False,
                             online_lr=online_lr, **PROTOTYPE)
        trainer = build_trainer(config, CPU)
        for group in trainer.optimizer.param_groups:
            group["lr"] = 0.0  # where the cosine schedule ends: the last validation's rate
        rates = []
        plain_step = trainer.optimizer.step

        def recording_step(*args, **kwargs):
            rates.append({group["lr"] for group in trainer.optimizer.param_groups})
            return plain_step(*args, **kwargs)

        trainer.optimizer.step = recording_step
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.validate(epoch=0)
        trainer.close()
        assert rates and all(r == {online_lr or 0.0} for r in rates), rates
        assert [group["lr"] for group in trainer.optimizer.param_groups] == [0.0, 0.0]
        changed[online_lr] = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert changed == {None: False, 1e-3: True}


def test_no_cached_picture_means_no_step_and_no_change(synthetic_data, tmp_path):
    config = make_config(synthetic_data, tmp_path, online="cache", online_cache_dir=str(tmp_path / "empty"),
                         online_dedupe_gallery=False)
    trainer = build_trainer(config, CPU)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.validate(epoch=0)
    trainer.close()
    assert trainer.online.online_steps == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_test_time_adaptation_uses_image_e_mod_k_and_saves_a_chinese_clip_checkpoint(
        synthetic_data, tmp_path, capsys, cnclip_model_factory):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["test"]]
    fill_cache(tmp_path / "cache", "test", texts, k=2)
    trained = make_config(synthetic_data, tmp_path, name="base", max_steps=2)
    build_trainer(trained, CPU).fit()
    checkpoint = trained.checkpoint_dir / "epoch_latest.pt"
    events = tmp_path / "predict.jsonl"
    code = main(["predict", "--resume", str(checkpoint), "--image-data", str(synthetic_data.lmdb("test")),
                 "--text-data", str(synthetic_data.texts("test")), "--vision-model", "tiny", "--text-model", "tiny",
                 "--precision", "fp32", "--online", "cache", "--online-cache-dir", str(tmp_path / "cache"),
                 "--online-max-epochs", "3", "--online-images", "2", "--online-dedupe-gallery", "off",
                 "--output", str(tmp_path / "experiments/results/p.jsonl"), "--experiments",
                 str(tmp_path / "experiments"), "--name", "tta", "--events", str(events), *PROTOTYPE_CLI])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    adapted = tmp_path / "experiments" / "tta" / "epoch1_online_3.pt"
    assert result["adapted_checkpoint"] == str(adapted) and adapted.is_file()
    online = [e["data"] for e in _events(events) if e["type"] == "online"]
    assert sorted({(o["pass_index"], o["image_index"]) for o in online}) == [(0, 0), (1, 1), (2, 0)]
    assert all(o["pairs"] > 0 for o in online)
    # Chinese-CLIP's own model loads it as its evaluation does (strip `module.`, strict).
    from services.trainer.model.configs import text_tower, vision_tower

    theirs = cnclip_model_factory(vision_tower("tiny"), text_tower("tiny"))
    state = torch.load(adapted, map_location="cpu", weights_only=False)["state_dict"]
    theirs.load_state_dict({k.removeprefix("module."): v for k, v in state.items() if "bert.pooler" not in k},
                           strict=True)


def test_a_resumed_run_continues_the_online_step_count_without_repeating_passes(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts)
    common = dict(online="cache", online_cache_dir=str(tmp_path / "cache"), online_dedupe_gallery=False,
                  valid_step_interval=2, valid_epoch_interval=-1, name="resumed", **PROTOTYPE)
    first = build_trainer(make_config(synthetic_data, tmp_path, max_steps=2, **common), CPU)
    first.fit()
    per_pass = first.valid_data.num_batches
    first.close()
    latest = first.config.checkpoint_dir / "epoch_latest.pt"
    assert torch.load(latest, weights_only=False)["online_steps"] == per_pass
    events = tmp_path / "resumed.jsonl"
    sink = JsonLinesSink(events)
    again = build_trainer(make_config(synthetic_data, tmp_path, max_steps=4, **common), CPU, sink)
    assert again.step == 2 and again.online.online_steps == per_pass
    again.fit()
    again.close()
    sink.close()
    passes = [e["data"] for e in _events(events) if e["type"] == "online_pass"]
    assert len(passes) == 1  # only the pass at step 4; the one at step 2 was finished before
    assert again.online.online_steps == 2 * per_pass
