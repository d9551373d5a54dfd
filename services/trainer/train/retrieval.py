"""Text-to-image retrieval over a whole split: the best images of each text by feature
similarity, scored with the MUGE metrics of ``shared.muge`` (the metric is defined there
only; this module ranks).

Scores are computed a chunk of texts at a time, so memory stays bounded by
``chunk x images`` however many texts there are.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from shared.muge import RECALL_KS, recall_metrics


@dataclass
class RetrievalResult:
    r1: float
    r5: float
    r10: float
    mr: float
    top_image_ids: list[list[Hashable]]  # per text, the best images (at most 10), best first


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
    # Texts are keyed by position: two texts may share an id only in a caller's mistake, and
    # the metric must count every row it was given.
    metrics = recall_metrics(dict(enumerate(ground_truth)), dict(enumerate(top_ids)))
    return RetrievalResult(metrics["r1"], metrics["r5"], metrics["r10"], metrics["mr"], top_ids)
