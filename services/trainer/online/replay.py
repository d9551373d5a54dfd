"""Offline pairs mixed into online steps (replay), so that learning from crawled pictures of new
queries does not wear away what the model knew. The pairs compete in the same contrastive loss
as the crawled ones: they anchor the seen concepts and give the crawled pairs negatives of the
kind the model already tells apart."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from services.trainer.data.lmdb_read import PairsDataset
from services.trainer.data.transforms import image_transform


class ReplayPairs:
    """Random pairs of an LMDB split, drawn from a seeded stream of this rank's own."""

    def __init__(self, split_dir: str | Path, resolution: int, context_length: int, seed: int, rank: int):
        self.pairs = PairsDataset(split_dir, image_transform(resolution), context_length=context_length)
        if len(self.pairs) == 0:
            raise ValueError(f"the replay data {split_dir} holds no pairs")
        self._rng = random.Random(seed * 1_000_003 + rank)
        self.drawn = 0

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``n`` pairs as (images, input_ids, attention_mask), or None for ``n == 0``."""
        if n <= 0:
            return None
        items = [self.pairs[self._rng.randrange(len(self.pairs))] for _ in range(n)]
        images, input_ids, masks = zip(*[item[:3] for item in items])
        self.drawn += n
        return torch.stack(images), torch.stack(input_ids), torch.stack(masks)
