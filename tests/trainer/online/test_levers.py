"""The levers that make online learning pay: a budget of its own, every crawled picture used in
turn, disagreeing pictures dropped, offline pairs replayed, test-time weights interpolated.
Through the real training loop and prediction in cache mode (the shop's own pictures)."""
from __future__ import annotations

import json

import pytest
import torch

from services.trainer.cli import main
from services.trainer.online.agreement import agreeing
from services.trainer.online.budget import StepBudget
from services.trainer.engine.distributed import DistEnv
from services.trainer.train.events import JsonLinesSink
from services.trainer.train.run import build_trainer
from tests.fixtures_online import fill_cache
from tests.trainer.test_train_loop import make_config

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def _events(path, kind):
    return [json.loads(line)["data"] for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["type"] == kind]


# ---- the budget ---------------------------------------------------------------------------
def _spent(ratio, validate_every, total_steps, batches):
    budget, spent = StepBudget(ratio), []
    for step in range(validate_every, total_steps + 1, validate_every):
        budget.start_pass(step, batches)
        spent.append(sum(budget.steps_for_batch() for _ in range(batches)))
    return spent


def test_the_budget_does_not_depend_on_how_often_validation_runs():
    often, seldom = _spent(0.25, 16, 192, 2), _spent(0.25, 96, 192, 3)
    assert sum(often) == sum(seldom) == 48  # 0.25 x 192 training steps
    assert often == [4] * 12 and seldom == [24, 24]


def test_fractions_carry_over_and_the_prototype_steps_once_per_batch():
    assert sum(_spent(0.1, 7, 70, 3)) == 7  # 0.7 a pass, none lost to rounding
    prototype = StepBudget(None)
    prototype.start_pass(100, 4)
    assert [prototype.steps_for_batch() for _ in range(4)] == [1, 1, 1, 1]
    test_time = StepBudget(0.25)
    test_time.start_pass(None, 4)  # prediction: no training steps, one step per batch
    assert [test_time.steps_for_batch() for _ in range(4)] == [1, 1, 1, 1]


def test_training_passes_step_at_the_rate_their_steps_were_earned_at():
    schedule = {step: 0.001 * (100 - step) for step in range(100)}.__getitem__  # a decaying rate
    budget = StepBudget(0.5, schedule=schedule)
    budget.start_pass(40, 2)
    assert budget.rate == pytest.approx(sum(schedule(s) for s in range(40)) / 40)
    budget.start_pass(100, 2)
    assert budget.rate == pytest.approx(sum(schedule(s) for s in range(40, 100)) / 60)
    # So the learning done online (steps x rate) does not depend on where the passes fall.
    for every in (10, 20, 50):
        mass, budget = 0.0, StepBudget(0.5, schedule=schedule)
        for step in range(every, 101, every):
            budget.start_pass(step, 1)
            mass += budget.steps_for_batch() * budget.rate
        assert mass == pytest.approx(0.5 * sum(schedule(s) for s in range(100)))
    test_time = StepBudget(0.5, schedule=schedule, test_steps=4)
    test_time.start_pass(None, 3)
    assert test_time.rate is None and [test_time.steps_for_batch() for _ in range(3)] == [4, 4, 4]


# ---- the agreement filter -----------------------------------------------------------------
def test_the_picture_that_disagrees_with_the_others_is_dropped():
    torch.manual_seed(0)
    centre = torch.nn.functional.normalize(torch.randn(16), dim=0)
    alike = [torch.nn.functional.normalize(centre + 0.1 * torch.randn(16), dim=0) for _ in range(4)]
    outlier = torch.nn.functional.normalize(torch.randn(16), dim=0)
    features = torch.stack(alike[:2] + [outlier] + alike[2:])
    assert agreeing(features, 4) == [0, 1, 3, 4]
    assert agreeing(features, 5) == [0, 1, 2, 3, 4]  # nothing to drop when all are kept


# ---- through the training loop ------------------------------------------------------------
def test_default_levers_in_training_budget_filter_and_replay(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts, k=5)
    events = tmp_path / "events.jsonl"
    config = make_config(synthetic_data, tmp_path, online="cache", online_cache_dir=str(tmp_path / "cache"),
                         online_dedupe_gallery=False, max_steps=8, valid_step_interval=4, valid_epoch_interval=-1,
                         valid_batch_size=256, online_step_ratio=0.5, online_keep_images=3, online_replay=1.0)
    sink = JsonLinesSink(events)
    trainer = build_trainer(config, CPU, sink)
    trainer.fit()
    trainer.close()
    sink.close()
    passes = _events(events, "online_pass")
    batches = _events(events, "online")
    assert len(batches) == len(passes) == 2  # the whole split in one batch
    assert [p["steps"] for p in passes] == [2, 2]  # 0.5 x 4 training steps before each pass
    assert trainer.online.online_steps == 4
    # Five pictures, three kept: each query's two least agreeing pictures dropped, once a pass.
    assert [p["dropped_disagreeing"] for p in passes] == [2 * len(set(texts))] * 2
    # One offline pair per crawled pair in every step taken.
    assert [b["replay_pairs"] for b in batches] == [b["pairs"] * b["steps"] for b in batches]
    assert trainer.online.levers.replay.drawn == sum(b["replay_pairs"] for b in batches) > 0


@pytest.mark.parametrize("cycle", [True, False])
def test_each_use_of_a_query_takes_its_next_picture_unless_told_the_prototypes_way(synthetic_data, tmp_path, cycle):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts, k=5)
    events = tmp_path / "events.jsonl"
    config = make_config(synthetic_data, tmp_path, online="cache", online_cache_dir=str(tmp_path / "cache"),
                         online_dedupe_gallery=False, max_steps=3, valid_step_interval=1, valid_epoch_interval=-1,
                         valid_batch_size=256, online_step_ratio=None, online_keep_images=None, online_replay=0.0,
                         online_cycle_images=cycle)
    sink = JsonLinesSink(events)
    trainer = build_trainer(config, CPU, sink)
    trainer.fit()
    trainer.close()
    sink.close()
    digests = [b["pairs_sha256"] for b in _events(events, "online")]
    assert len(digests) == 3
    # The digest names the (query, picture) pairs a step learnt from.
    assert len(set(digests)) == (3 if cycle else 1)


def test_the_same_amount_is_learnt_whether_validation_runs_often_or_seldom(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts)
    totals = {}
    for every in (2, 8):
        config = make_config(synthetic_data, tmp_path / str(every), online="cache",
                             online_cache_dir=str(tmp_path / "cache"), online_dedupe_gallery=False, max_steps=8,
                             valid_step_interval=every, valid_epoch_interval=-1, online_step_ratio=0.5)
        trainer = build_trainer(config, CPU)
        trainer.fit()
        trainer.close()
        totals[every] = (len(trainer.result.validations), trainer.online.online_steps)
    assert totals == {2: (4, 4), 8: (1, 4)}


# ---- test time ------------------------------------------------------------------------------
@pytest.fixture()
def base_checkpoint(synthetic_data, tmp_path):
    trained = make_config(synthetic_data, tmp_path, name="base", max_steps=2)
    build_trainer(trained, CPU).fit()
    return trained.checkpoint_dir / "epoch_latest.pt"


def _adapt(synthetic_data, tmp_path, checkpoint, name, *extra):
    events = tmp_path / f"{name}.jsonl"
    code = main(["predict", "--resume", str(checkpoint), "--image-data", str(synthetic_data.lmdb("test")),
                 "--text-data", str(synthetic_data.texts("test")), "--vision-model", "tiny", "--text-model", "tiny",
                 "--precision", "fp32", "--online", "cache", "--online-cache-dir", str(tmp_path / "cache"),
                 "--online-max-epochs", "2", "--online-dedupe-gallery", "off", "--lr", "1e-3",
                 "--output", str(tmp_path / "experiments/results" / f"{name}.jsonl"), "--experiments",
                 str(tmp_path / "experiments"), "--name", name, "--events", str(events), "--no-progress", *extra])
    assert code == 0
    state = torch.load(tmp_path / "experiments" / name / "epoch1_online_2.pt", weights_only=False)["state_dict"]
    return state, events


def test_test_time_interpolation_keeps_the_share_of_the_change_asked_for(synthetic_data, tmp_path, base_checkpoint):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["test"]]
    fill_cache(tmp_path / "cache", "test", texts, k=3)
    start = torch.load(base_checkpoint, weights_only=False)["state_dict"]
    full, _ = _adapt(synthetic_data, tmp_path, base_checkpoint, "full", "--online-interpolate", "1")
    half, _ = _adapt(synthetic_data, tmp_path, base_checkpoint, "half", "--online-interpolate", "0.5")
    changed = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], full[k])]
    assert changed
    for key in changed:
        torch.testing.assert_close(half[key], start[key] + 0.5 * (full[key] - start[key]), rtol=1e-5, atol=1e-6)


def test_test_time_replay_mixes_offline_pairs_only_when_given_data(synthetic_data, tmp_path, base_checkpoint):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["test"]]
    fill_cache(tmp_path / "cache", "test", texts, k=3)
    _, without = _adapt(synthetic_data, tmp_path, base_checkpoint, "plain")
    _, with_data = _adapt(synthetic_data, tmp_path, base_checkpoint, "replayed",
                          "--online-replay-data", str(synthetic_data.lmdb("train")))
    plain = _events(without, "online_pass")
    replayed = _events(with_data, "online_pass")
    assert all(p["replay_pairs"] == 0 for p in plain)
    # Test time replays two offline pairs per crawled pair (online_replay auto) in each of the
    # pass's steps (the split is one batch).
    assert [p["replay_pairs"] for p in replayed] == [2 * p["pairs"] * p["steps"] for p in replayed]
    assert all(p["steps"] > 0 for p in replayed)


def test_hand_started_runs_crawl_under_identities_of_their_own():
    from services.trainer.online.client import request_id_for
    from services.trainer.online.factory import crawl_identity

    assert crawl_identity("job-7", "run") == "job-7"  # a job's requests are the job's
    first, second = crawl_identity(None, "run"), crawl_identity(None, "run")
    assert first != second and first.startswith("run-")
    # The crawler answers a request id once: a second run must not ask under the first's ids.
    assert request_id_for(first, "test", "红色杯子", 0) != request_id_for(second, "test", "红色杯子", 0)
