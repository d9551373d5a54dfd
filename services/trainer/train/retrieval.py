"""Text-to-image retrieval metrics over a whole split, as Chinese-CLIP's MUGE evaluator
defines them: a text is a hit at k when any of its ground-truth images is among its k best
images; R@k is the percentage of texts that hit, mean recall the mean of R@1, R@5, R@10.

Scores are computed a chunk of texts at a time, so memory stays bounded by
``chunk x images`` however many texts there are.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

RECALL_KS = (1, 5, 10)


@dataclass
class RetrievalResult:
    r1: float
    r5: float
    r10: float
    mr: float
    top_image_ids: list[list[Hashable]]  # per text, the best images (at most 10), best first
    hits: torch.Tensor  # [texts, 3] bool: hit at 1, 5, 10


def recall_at_k(
    text_features: torch.Tensor,
    image_features: torch.Tensor,
    image_ids: Sequence[Hashable],
    ground_truth: Sequence[set[Hashable]],
    chunk_size: int = 1024,
) -> RetrievalResult:
    """``text_features`` [T, D] and ``image_features`` [I, D] (normalised), ``image_ids`` the id
    of each image row, ``ground_truth[t]`` the image ids that answer text ``t``."""
    if text_features.shape[0] != len(ground_truth):
        raise ValueError(f"{text_features.shape[0]} texts but {len(ground_truth)} ground-truth sets")
    if image_features.shape[0] != len(image_ids):
        raise ValueError(f"{image_features.shape[0]} images but {len(image_ids)} image ids")
    if text_features.shape[0] == 0 or image_features.shape[0] == 0:
        raise ValueError("retrieval needs at least one text and one image")
    ids = list(image_ids)
    k_max = min(max(RECALL_KS), image_features.shape[0])
    top_ids: list[list[Hashable]] = []
    images = image_features.float()
    for start in range(0, text_features.shape[0], chunk_size):
        scores = text_features[start:start + chunk_size].float() @ images.t()
        best = scores.topk(k_max, dim=1).indices
        top_ids.extend([ids[i] for i in row] for row in best.tolist())
    hits = torch.zeros(len(top_ids), len(RECALL_KS), dtype=torch.bool)
    for t, (predicted, truth) in enumerate(zip(top_ids, ground_truth)):
        for j, k in enumerate(RECALL_KS):
            hits[t, j] = any(image_id in truth for image_id in predicted[:k])
    r1, r5, r10 = (hits[:, j].float().mean().item() * 100 for j in range(len(RECALL_KS)))
    return RetrievalResult(r1, r5, r10, (r1 + r5 + r10) / 3, top_ids, hits)
