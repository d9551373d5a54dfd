"""A distributed sampler whose order is a pure function of (seed, epoch), so a resumed run can
start an epoch at any batch and see exactly the batches an uninterrupted run would have seen."""
from __future__ import annotations

import math
from typing import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Shards a permutation of the dataset over ``num_replicas`` ranks, in whole batches.

    Every epoch, all ranks draw the same permutation from ``seed + epoch``; rank ``r`` takes
    every ``num_replicas``-th index starting at ``r``. The epoch holds the same number of
    batches of ``batch_size`` on every rank: ``drop_last`` drops the incomplete global batch,
    otherwise the permutation wraps around to fill it (as Chinese-CLIP pads its dataset).
    ``set_epoch(epoch, start_batch)`` skips the first ``start_batch`` batches of the epoch."""

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 batch_size: int = 1) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not within [0, {num_replicas - 1}]")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} samples make no full global batch of {num_replicas} x {batch_size}"
                " (use fewer ranks, a smaller batch or drop_last=False)"
            )

    @property
    def global_batch_size(self) -> int:
        return self.num_replicas * self.batch_size

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.dataset)
        if self.drop_last:
            return n // self.global_batch_size
        return math.ceil(n / self.global_batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0, batch_size: int | None = None) -> None:
        """Choose the epoch and the first batch (of this epoch) to yield."""
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be at least 1, got {batch_size}")
            self.batch_size = batch_size
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is not within [0, {self.batches_per_epoch}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_indices(self) -> list[int]:
        """All indices of this rank for the whole epoch (no batch skipped)."""
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        total = self.batches_per_epoch * self.global_batch_size
        if total > n:
            order = (order * math.ceil(total / n))[:total]
        else:
            order = order[:total]
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
