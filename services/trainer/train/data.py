"""Training and validation batches from LMDB splits, sharded over the ranks.

Each item carries its pair's ids and raw text besides the tensors, so validation can
deduplicate images and texts and the online hook gets each batch's query texts.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from services.trainer.data.lmdb_read import PairsDataset
from services.trainer.data.sampler import ResumableDistributedSampler
from services.trainer.data.transforms import image_transform
from services.trainer.train.config import ConfigError, TrainConfig
from services.trainer.engine.distributed import DistEnv


@dataclass
class Batch:
    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str]
    image_ids: list[Any]
    text_ids: list[Any]


class PairsWithIds(Dataset):
    """Item ``i`` of a PairsDataset plus its image id, text id and raw text."""

    def __init__(self, pairs: PairsDataset):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image, input_ids, attention_mask, text = self.pairs[index]
        image_id, text_id, _ = self.pairs.pair(index)
        return image, input_ids, attention_mask, text, image_id, text_id


def collate(items: list[tuple]) -> Batch:
    images, input_ids, masks, texts, image_ids, text_ids = zip(*items)
    return Batch(torch.stack(images), torch.stack(input_ids), torch.stack(masks),
                 list(texts), list(image_ids), list(text_ids))


class LazyTexts(Sequence[str]):
    """The texts of a list of pair indices, read only when asked for."""

    def __init__(self, pairs: PairsDataset, indices: list[int]):
        self.pairs = pairs
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.pairs.text_of(j) for j in self.indices[i]]
        return self.pairs.text_of(self.indices[i])


class SplitData:
    """One split's dataset, sampler and loader for this rank."""

    def __init__(self, split_dir, config: TrainConfig, env: DistEnv, resolution: int, *,
                 train: bool, batch_size: int, num_workers: int, seed: int):
        what = "training" if train else "validation"
        transform = image_transform(resolution, train=train, use_augment=config.use_augment and train)
        try:
            self.pairs = PairsDataset(split_dir, transform, context_length=config.context_length, return_text=True)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"cannot read the {what} data: {exc}") from exc
        if len(self.pairs) == 0:
            raise ConfigError(f"the {what} data {split_dir} holds no pairs")
        # Like Chinese-CLIP, the last global batch is filled by wrapping around to the start,
        # so every pair is seen and every rank gets the same number of full batches.
        self.sampler = ResumableDistributedSampler(
            self.pairs, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed,
            drop_last=False, batch_size=batch_size,
        )
        self.loader = DataLoader(
            PairsWithIds(self.pairs), batch_size=batch_size, sampler=self.sampler,
            num_workers=num_workers, collate_fn=collate, pin_memory=env.device.type == "cuda",
            drop_last=False,
        )

    @property
    def num_batches(self) -> int:
        return self.sampler.batches_per_epoch

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterable[Batch]:
        """The batches of ``epoch`` from ``start_batch`` on (this rank's share)."""
        self.sampler.set_epoch(epoch, start_batch)
        return self.loader

    def batches(self) -> Iterable[Batch]:
        """Every batch of the split in a fixed order (validation)."""
        return self.epoch(0)

    def rank_texts(self) -> Sequence[str]:
        """This rank's query texts in batch order (read lazily)."""
        self.sampler.set_epoch(0)
        return LazyTexts(self.pairs, self.sampler.epoch_indices())


def build_train_data(config: TrainConfig, env: DistEnv, resolution: int) -> SplitData:
    return SplitData(config.train_data, config, env, resolution, train=True,
                     batch_size=config.batch_size, num_workers=config.num_workers, seed=config.seed)


def build_valid_data(config: TrainConfig, env: DistEnv, resolution: int) -> SplitData:
    return SplitData(config.val_data, config, env, resolution, train=False,
                     batch_size=config.valid_batch_size, num_workers=config.valid_num_workers, seed=config.seed)
