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
from services.trainer.online.interleave import TrainingTimeSteps
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


def test_with_neighbours_the_densest_group_wins_even_when_it_is_the_smaller_one():
    # Two pictures of the right item, nearly identical; three wrong items that share something
    # (say, the category) but differ from each other: mean agreement over all the others prefers
    # the wrong three, agreement with the nearest other picture the right two.
    eye = torch.eye(8)
    right = [torch.nn.functional.normalize(eye[0] + 0.05 * eye[6], dim=0),
             torch.nn.functional.normalize(eye[0] + 0.05 * eye[7], dim=0)]
    wrong = [torch.nn.functional.normalize(0.84 * eye[1] + 0.55 * eye[k], dim=0) for k in (2, 3, 4)]
    features = torch.stack([wrong[0], right[0], wrong[1], right[1], wrong[2]])
    assert agreeing(features, 2) != [1, 3]
    assert agreeing(features, 2, neighbours=1) == [1, 3]
    assert agreeing(features, 2, neighbours=4) == agreeing(features, 2)  # all the others: the mean


# ---- through the training loop ------------------------------------------------------------
def test_default_levers_in_training_budget_filter_and_replay(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts, k=5)
    events = tmp_path / "events.jsonl"
    config = make_config(synthetic_data, tmp_path, online="cache", online_cache_dir=str(tmp_path / "cache"),
                         online_dedupe_gallery=False, max_steps=8, valid_step_interval=4, valid_epoch_interval=-1,
                         valid_batch_size=256, online_step_ratio=0.5, online_keep_images=3, online_replay=1.0,
                         online_schedule="validation")
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
                         online_cycle_images=cycle, online_schedule="validation")
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
                             valid_step_interval=every, valid_epoch_interval=-1, online_step_ratio=0.5,
                             online_schedule="validation")
        trainer = build_trainer(config, CPU)
        trainer.fit()
        trainer.close()
        totals[every] = (len(trainer.result.validations), trainer.online.online_steps)
    assert totals == {2: (4, 4), 8: (1, 4)}


# ---- online steps during training -----------------------------------------------------------
def _plan(ratio, texts, batch_size=2):
    plan = TrainingTimeSteps(ratio, batch_size, lambda t: (torch.zeros(len(t), 4), torch.ones(len(t), 4)))
    plan.plan("valid", texts)
    return plan


def test_steps_during_training_are_taken_as_they_are_earned():
    plan, taken = _plan(0.25, ["a", "b", "c"]), []
    for step in range(1, 13):
        owed = plan.earn(step)
        for _ in range(owed):
            plan.spent()
        taken.append(owed)
    assert taken == [0, 0, 0, 1] * 3  # one online step every four training steps
    # Steps no rank had a pair for stay owed, and are made up at most one extra a training step.
    plan = _plan(0.5, ["a"])
    assert [plan.earn(step) for step in range(1, 9)] == [0, 1, 1, 2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="positive online_step_ratio"):
        TrainingTimeSteps(0, 2, None)


def test_steps_during_training_walk_the_validation_queries_whose_pictures_are_ready():
    plan = _plan(1.0, ["a", "b", "a", "c", "d", "e"])  # "a" repeated: each query once a walk
    walked = []
    for _ in range(6):
        starts = plan.starts_walk
        batch = plan.next_batch(lambda text: True)
        walked.append((batch.index, batch.texts, starts, plan.ends_walk))
        assert batch.input_ids.shape[0] == len(batch.texts)
    assert walked == [(0, ["a", "b"], True, False), (1, ["c", "d"], False, False), (2, ["e"], False, True)] * 2
    # Queries with no pictures yet are passed over: a step gets a full batch when there is one.
    plan = _plan(1.0, ["a", "b", "c", "d", "e"])
    first = plan.next_batch(lambda text: text in "ace")
    assert (first.texts, first.not_ready, plan.ends_walk) == (["a", "c"], 1, False)
    second = plan.next_batch(lambda text: text in "ace")
    assert (second.texts, second.not_ready, plan.ends_walk) == (["e"], 1, True)
    nothing = plan.next_batch(lambda text: False)
    assert (nothing.texts, nothing.not_ready, tuple(nothing.input_ids.shape), plan.ends_walk) == ([], 5, (0, 4), True)


def test_online_steps_during_training_do_not_depend_on_the_validation_schedule(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts[:len(texts) // 2])  # the other half never arrives
    runs = {}
    for every in (2, 8):
        events = tmp_path / f"events-{every}.jsonl"
        config = make_config(synthetic_data, tmp_path / str(every), online="cache",
                             online_cache_dir=str(tmp_path / "cache"), online_dedupe_gallery=False, max_steps=8,
                             valid_step_interval=every, valid_epoch_interval=-1, online_step_ratio=0.5,
                             online_schedule="training", valid_batch_size=16)
        sink = JsonLinesSink(events)
        trainer = build_trainer(config, CPU, sink)
        trainer.fit()
        trainer.close()
        sink.close()
        runs[every] = (trainer.model.state_dict(), _events(events, "online"), len(trainer.result.validations))
        assert trainer.online.online_steps == 4  # 0.5 x 8 training steps, however often validation ran
    (often, often_batches, often_validations), (seldom, seldom_batches, seldom_validations) = runs[2], runs[8]
    assert (often_validations, seldom_validations) == (4, 1)
    # The same steps on the same pairs at the same moments: the same weights.
    assert [b["pairs_sha256"] for b in often_batches] == [b["pairs_sha256"] for b in seldom_batches]
    for key in often:
        torch.testing.assert_close(often[key], seldom[key], rtol=0, atol=0)
    # Queries whose pictures are not in the cache are passed over (counted in the pass), so
    # each step has a full batch of pairs.
    assert [(b["steps"], b["pairs"], b["queries"]) for b in often_batches] == [(1, 16, 16), (1, 14, 14)] * 2
    seldom_passes = _events(tmp_path / "events-8.jsonl", "online_pass")  # 30 of the 60 queries, twice
    assert [(p["pairs"], p["missing"], p["steps"]) for p in seldom_passes] == [(30, {"not_cached": 30}, 2)] * 2
    # Validating more often cuts the reports (a pass ends at a validation too), not the learning.
    often_passes = _events(tmp_path / "events-2.jsonl", "online_pass")
    assert len(often_passes) == 4 and sum(p["pairs"] for p in often_passes) == 60
    assert sum(p["steps"] for p in often_passes) == 4


def test_a_walk_whose_last_queries_have_no_pictures_goes_straight_on_to_the_next(synthetic_data, tmp_path):
    texts = list(dict.fromkeys(t["text"] for t in synthetic_data.manifest["texts"]["valid"]))
    fill_cache(tmp_path / "cache", "valid", texts[:16])  # the walk's first batch; nothing after it
    runs = {}
    for every in (2, 8):
        events = tmp_path / f"tail-{every}.jsonl"
        config = make_config(synthetic_data, tmp_path / f"tail{every}", online="cache",
                             online_cache_dir=str(tmp_path / "cache"), online_dedupe_gallery=False, max_steps=8,
                             valid_step_interval=every, valid_epoch_interval=-1, online_step_ratio=0.5,
                             online_schedule="training", valid_batch_size=16)
        sink = JsonLinesSink(events)
        trainer = build_trainer(config, CPU, sink)
        trainer.fit()
        trainer.close()
        sink.close()
        runs[every] = ([(b["steps"], b["pairs"]) for b in _events(events, "online")], trainer.model.state_dict())
    # Every step on the 16 queries with pictures, during training: none owed to a validation pass.
    assert runs[2][0] == runs[8][0] == [(1, 16)] * 4
    for key in runs[2][1]:
        torch.testing.assert_close(runs[2][1][key], runs[8][1][key], rtol=0, atol=0)


def test_steps_still_owed_are_taken_by_the_next_validation_pass():
    plan = _plan(0.5, ["a"])
    for step in range(1, 5):
        plan.earn(step)  # no rank had a pair: nothing spent
    assert plan.take_owed() == 2 and plan.take_owed() == 0
    budget = StepBudget(0.5)
    budget.spread(2, 3)
    assert [budget.steps_for_batch() for _ in range(3)] == [0, 1, 1] and budget.rate is None


class _PicturesArriveAtValidation:
    """A sink that puts the validation queries' pictures in the cache when validation starts, as
    a crawl slower than training would."""

    def __init__(self, cache, texts):
        self.cache, self.texts, self.events = cache, texts, []

    def emit(self, type, **data):
        if type == "phase" and data.get("name") == "validation":
            fill_cache(self.cache, "valid", self.texts)
        self.events.append((type, data))

    def close(self):
        pass


def test_a_crawl_slower_than_training_loses_no_online_step(synthetic_data, tmp_path):
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    sink = _PicturesArriveAtValidation(tmp_path / "cache", texts)
    config = make_config(synthetic_data, tmp_path, online="cache", online_cache_dir=str(tmp_path / "cache"),
                         online_dedupe_gallery=False, max_steps=4, valid_step_interval=4, valid_epoch_interval=-1,
                         online_step_ratio=0.5, online_schedule="training", valid_batch_size=16)
    trainer = build_trainer(config, CPU, sink)
    trainer.fit()
    trainer.close()
    online = [data for kind, data in sink.events if kind == "online"]
    # Nothing was in the cache while training: the two steps earned are the validation pass's.
    assert trainer.online.online_steps == 2
    assert sum(o["steps"] for o in online) == 2 and all(o["pairs"] > 0 for o in online if o["steps"])
    first_online = next(i for i, (kind, _) in enumerate(sink.events) if kind == "online")
    assert any(kind == "phase" and data["name"] == "validation" for kind, data in sink.events[:first_online])


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
