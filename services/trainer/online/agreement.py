"""Which crawled pictures of a query to learn from: those that agree with each other.

A real search puts wrong items among a query's results (another colour, another product). The
right ones show the same thing and so lie close together in the image tower's embedding space,
while each wrong one is an outlier. Ranking a query's pictures by their mean cosine similarity
to its other pictures and keeping the ``keep`` best drops the outliers; it needs no knowledge of
the query's words, which is what matters for concepts the model has never seen named.
"""
from __future__ import annotations

import torch


def agreeing(features: torch.Tensor, keep: int, neighbours: int | None = None) -> list[int]:
    """Indices (in crawl order) of the ``keep`` rows of L2-normalised ``features`` that agree
    most with the others; all of them when there are at most ``keep``.

    A row's agreement is its mean cosine similarity to the other rows, or, with ``neighbours``,
    to its ``neighbours`` most similar other rows. The mean over all rows counts every wrong
    item against every right one, so when wrong items are many it favours pictures halfway
    between; the nearest neighbours measure how dense the picture's own group is, and the
    right item, shown several times, is the densest group."""
    n = features.shape[0]
    if n <= keep:
        return list(range(n))
    similarity = features.float() @ features.float().T
    others = similarity.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    count = n - 1 if neighbours is None else min(neighbours, n - 1)
    score = others.topk(count, dim=1).values.mean(dim=1)
    # Ties go to the earlier picture (a search ranks its best results first).
    order = sorted(range(n), key=lambda i: (-round(score[i].item(), 6), i))
    return sorted(order[:keep])
