"""The resumable distributed sampler: exact batches after a resume, same order for a seed."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from services.trainer.data.sampler import ResumableDistributedSampler


def batches(sampler, batch_size):
    return [b.tolist() for b in DataLoader(list(range(len(sampler.dataset))), batch_size=batch_size,
                                           sampler=sampler, drop_last=True)]


def test_ranks_split_each_global_batch_without_overlap():
    data = list(range(103))
    ranks = [ResumableDistributedSampler(data, 3, r, seed=7, batch_size=4) for r in range(3)]
    assert ranks[0].batches_per_epoch == 103 // 12
    per_rank = [list(s) for s in ranks]
    assert all(len(p) == len(s) == 8 * 4 for p, s in zip(per_rank, ranks))
    flat = [i for p in per_rank for i in p]
    assert len(set(flat)) == len(flat) == 96
    # Global batch b is one contiguous block of the epoch's permutation, whatever the rank count.
    single = list(ResumableDistributedSampler(data, 1, 0, seed=7, batch_size=12))
    for b in range(8):
        together = sorted(i for p in per_rank for i in p[b * 4:(b + 1) * 4])
        assert together == sorted(single[b * 12:(b + 1) * 12])


def test_order_depends_only_on_seed_and_epoch():
    data = list(range(50))
    a = ResumableDistributedSampler(data, 2, 1, seed=3, batch_size=5)
    b = ResumableDistributedSampler(data, 2, 1, seed=3, batch_size=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    c = ResumableDistributedSampler(data, 2, 1, seed=4, batch_size=5)
    c.set_epoch(2)
    assert list(a) != list(c)
    unshuffled = ResumableDistributedSampler(data, 2, 0, shuffle=False, batch_size=5)
    assert list(unshuffled) == list(range(0, 50, 2))


@pytest.mark.parametrize("start_batch", [0, 1, 3, 6])
def test_resume_continues_at_the_exact_next_batch(start_batch):
    data = list(range(61))
    for rank in range(2):
        full = ResumableDistributedSampler(data, 2, rank, seed=11, batch_size=5)
        full.set_epoch(4)
        uninterrupted = batches(full, 5)
        resumed = ResumableDistributedSampler(data, 2, rank, seed=11, batch_size=5)
        resumed.set_epoch(4, start_batch=start_batch)
        assert len(resumed) == (6 - start_batch) * 5
        assert batches(resumed, 5) == uninterrupted[start_batch:]
        resumed.set_epoch(5)  # the next epoch starts from its first batch again
        full.set_epoch(5)
        assert list(resumed) == list(full)


def test_no_drop_last_wraps_to_fill_the_last_global_batch():
    data = list(range(10))
    ranks = [ResumableDistributedSampler(data, 2, r, seed=0, drop_last=False, batch_size=3) for r in range(2)]
    flat = [i for s in ranks for i in s]
    assert len(flat) == 12 and set(flat) == set(range(10))


def test_bad_arguments():
    with pytest.raises(ValueError, match="no full global batch"):
        ResumableDistributedSampler(list(range(5)), 2, 0, batch_size=4)
    with pytest.raises(ValueError, match="rank"):
        ResumableDistributedSampler(list(range(5)), 2, 2)
    sampler = ResumableDistributedSampler(list(range(20)), 1, 0, batch_size=4)
    with pytest.raises(ValueError, match="start_batch"):
        sampler.set_epoch(0, start_batch=6)
    sampler.set_epoch(0, start_batch=2, batch_size=2)
    assert len(sampler) == 8 * 2 and sampler.batches_per_epoch == 10


def test_defaults_without_a_process_group():
    sampler = ResumableDistributedSampler(torch.arange(9))
    assert (sampler.num_replicas, sampler.rank) == (1, 0)
    assert sorted(sampler) == list(range(9))
