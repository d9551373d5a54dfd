"""Two gloo ranks learn online in lock-step: a rank with no pictures for a batch still joins
that step (padding only), a batch where no rank has a picture is skipped by both, and nothing
hangs or diverges."""
from __future__ import annotations

import json

from services.trainer.data.lmdb_read import PairsDataset
from services.trainer.data.sampler import ResumableDistributedSampler
from tests.fixtures_online import fill_cache
from tests.trainer.online.test_learner import PROTOTYPE_CLI
from tests.trainer.test_train_distributed import read_events, tiny_args, torchrun_train

BATCH = 8
SEED = 123  # the run's --seed, which also orders the validation split


def _rank_batches(split_dir, rank: int) -> list[list[str]]:
    pairs = PairsDataset(split_dir, None, return_text=True)
    sampler = ResumableDistributedSampler(pairs, num_replicas=2, rank=rank, shuffle=True, seed=SEED,
                                          drop_last=False, batch_size=BATCH)
    sampler.set_epoch(0)
    order = [pairs.text_of(i) for i in sampler.epoch_indices()]
    return [order[i:i + BATCH] for i in range(0, len(order), BATCH)]


def test_ranks_stay_in_step_when_one_has_no_pictures(synthetic_data, tmp_path):
    rank0, rank1 = _rank_batches(synthetic_data.lmdb("valid"), 0), _rank_batches(synthetic_data.lmdb("valid"), 1)
    # Batch 0: rank 1 has no picture at all. Batch 1: nobody has one. The rest: everything.
    uncached = set(rank1[0]) | set(rank0[1]) | set(rank1[1])
    assert set(rank0[0]) - uncached, "rank 0 keeps pictures for its first batch"
    texts = [t["text"] for t in synthetic_data.manifest["texts"]["valid"]]
    fill_cache(tmp_path / "cache", "valid", texts, skip=uncached)
    events = tmp_path / "events.jsonl"
    done = torchrun_train([*tiny_args(synthetic_data, tmp_path, "ddp"), "--val-data", str(synthetic_data.lmdb("valid")),
                           "--batch-size", "8", "--valid-batch-size", str(BATCH), "--max-steps", "2",
                           "--seed", str(SEED), "--online", "cache", "--online-cache-dir", str(tmp_path / "cache"),
                           "--online-dedupe-gallery", "off", "--events", str(events), *PROTOTYPE_CLI,
                           "--trace-batches", str(tmp_path / "trace")], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    traces = {}
    for rank in (0, 1):
        lines = [json.loads(x) for x in (tmp_path / f"trace.rank{rank}.jsonl").read_text().splitlines()]
        traces[rank] = [x for x in lines if "online_split" in x]
    assert len(traces[0]) == len(traces[1]) == len(rank0)
    assert traces[0][0]["pairs"] > 0 and traces[1][0]["pairs"] == 0
    assert traces[0][0]["stepped"] and traces[1][0]["stepped"]  # rank 1 joined with padding only
    assert not traces[0][1]["stepped"] and not traces[1][1]["stepped"]  # skipped by both together
    assert [x["online_step"] for x in traces[0]] == [x["online_step"] for x in traces[1]]
    online = [e.data for e in read_events(events) if e.type == "online"]
    assert online[0]["loss"] is not None and online[1]["loss"] is None
    assert online[1]["missing"] == {"not_cached": online[1]["queries"]}
