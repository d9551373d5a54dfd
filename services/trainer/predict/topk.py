"""Top-k text-to-image retrieval with bounded memory.

The score matrix (queries x gallery) is never held whole: queries are taken in chunks and, for
each query chunk, the gallery is streamed in chunks while a running top-k per query is merged
with the chunk's own top-k. Peak memory is one ``query_chunk x gallery_chunk`` block plus the
features themselves, whatever the gallery size.

Ties are broken deterministically: among equal scores the lower gallery index ranks first, so the
result equals a stable descending sort of the full score row (``torch.topk`` alone picks tied
entries in no defined order).

The full score matrix can still be kept for ensembling: a :class:`ScoreMatrixWriter` receives
every block and writes it into a ``.npy`` memory map, so it goes to disk chunk by chunk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

DEFAULT_QUERY_CHUNK = 1024
DEFAULT_GALLERY_CHUNK = 8192
SCORE_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class TopK:
    """Per query, the k best gallery rows in descending score order (ties: lower index first)."""

    scores: torch.Tensor  # (Q, k) float32
    indices: torch.Tensor  # (Q, k) int64 row indices into the gallery


class BlockSink(Protocol):
    """Receives each score block as it is computed (rows q0.., columns g0..)."""

    def write(self, q0: int, g0: int, block: torch.Tensor) -> None: ...


class RunningTopK:
    """Running top-k of a set of query rows over gallery blocks given in increasing column order."""

    def __init__(self, rows: int, k: int, device: torch.device | str = "cpu"):
        self.k = k
        self.scores = torch.empty(rows, 0, dtype=torch.float32, device=device)
        self.indices = torch.empty(rows, 0, dtype=torch.int64, device=device)

    def update(self, block: torch.Tensor, offset: int) -> None:
        """Merge a (rows x columns) score block whose first column is gallery row ``offset``."""
        block = block.float()
        width = block.shape[1]
        kk = min(self.k, width)
        # One value more than needed: when the (kk+1)-th equals the kk-th, a tie straddles the
        # cut and torch.topk may have kept any of the tied entries. Only those rows are redone
        # with a stable sort so the lowest indices win; with real-valued scores they are rare,
        # so the common path costs one topk per block.
        values, idx = torch.topk(block, min(kk + 1, width), dim=1, largest=True, sorted=True)
        if values.shape[1] > kk:
            ambiguous = torch.nonzero(values[:, kk] == values[:, kk - 1]).flatten()
            values, idx = values[:, :kk].contiguous(), idx[:, :kk].contiguous()
            if ambiguous.numel():
                exact_v, exact_i = torch.sort(block[ambiguous], dim=1, descending=True, stable=True)
                values[ambiguous] = exact_v[:, :kk]
                idx[ambiguous] = exact_i[:, :kk]
        idx = idx + offset
        merged_v = torch.cat([self.scores, values], dim=1)
        merged_i = torch.cat([self.indices, idx], dim=1)
        # Order candidates by index, then stably by descending score: ties keep the lower index.
        by_index = torch.argsort(merged_i, dim=1)
        merged_v = torch.gather(merged_v, 1, by_index)
        merged_i = torch.gather(merged_i, 1, by_index)
        order = torch.sort(merged_v, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.scores = torch.gather(merged_v, 1, order)
        self.indices = torch.gather(merged_i, 1, order)


def _check_k(k: int, gallery_size: int) -> None:
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    if gallery_size < 1:
        raise ValueError("the gallery is empty: there is nothing to rank")
    if k > gallery_size:
        raise ValueError(f"top-k {k} is larger than the gallery ({gallery_size} images)")


def _check_chunk(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _check_finite(name: str, x: torch.Tensor, rows: int = 4096) -> None:
    # Row chunks: torch.isfinite makes temporaries as large as its input.
    for start in range(0, x.shape[0], rows):
        if not torch.isfinite(x[start : start + rows]).all():
            raise ValueError(f"{name} contain NaN or infinite values")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def chunked_topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    device: str | torch.device | None = None,
    sink: BlockSink | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TopK:
    """Top-k gallery rows by inner product for every query row.

    ``queries`` (Q x d) and ``gallery`` (N x d) are usually L2-normalised features, so the inner
    product is the cosine similarity. Every block of scores is handed to ``sink`` (if given)
    before it is merged. ``progress(done_queries, total_queries)`` is called after each query
    chunk. The result lives on the CPU.
    """
    if queries.ndim != 2 or gallery.ndim != 2:
        raise ValueError("queries and gallery must be 2-D feature matrices")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"feature sizes differ: queries have {queries.shape[1]}, gallery has {gallery.shape[1]}"
        )
    _check_k(k, gallery.shape[0])
    _check_chunk("query chunk", query_chunk)
    _check_chunk("gallery chunk", gallery_chunk)
    _check_finite("query features", queries)
    _check_finite("gallery features", gallery)
    dev = resolve_device(device)
    n_queries, n_gallery = queries.shape[0], gallery.shape[0]
    dtype = torch.promote_types(queries.dtype, gallery.dtype)
    # The gallery features (N x d) are moved once; only the score blocks are chunked.
    gallery_dev = gallery.to(dev, dtype)
    # One buffer holds every score block in turn: no allocator churn, a fixed footprint.
    buffer = torch.empty(min(query_chunk, n_queries) * min(gallery_chunk, n_gallery), dtype=dtype, device=dev)

    def rows(q0: int, q1: int) -> Callable[[int, int], torch.Tensor]:
        q = queries[q0:q1].to(dev, dtype)

        def block(g0: int, g1: int) -> torch.Tensor:
            scores = buffer[: (q1 - q0) * (g1 - g0)].view(q1 - q0, g1 - g0)
            torch.mm(q, gallery_dev[g0:g1].T, out=scores)
            if sink is not None:
                sink.write(q0, g0, scores)
            return scores

        return block

    return _blockwise_topk((n_queries, n_gallery), k, rows, query_chunk=query_chunk,
                           gallery_chunk=gallery_chunk, device=dev, progress=progress)


def fused_topk(
    matrices: list[np.ndarray],
    weights: list[float],
    k: int,
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    device: str | torch.device | None = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> TopK:
    """Top-k of the weighted sum of score matrices (Q x N each, typically memory maps).

    Blocks are read and summed one at a time, so memory stays at one block per member.
    """
    if not matrices:
        raise ValueError("no score matrices to fuse")
    if len(weights) != len(matrices):
        raise ValueError(f"{len(matrices)} score matrices but {len(weights)} weights")
    shape = matrices[0].shape
    for i, m in enumerate(matrices):
        if m.ndim != 2 or m.shape != shape:
            raise ValueError(f"score matrix {i + 1} has shape {m.shape}, expected {shape}")
    _check_k(k, shape[1])
    _check_chunk("query chunk", query_chunk)
    _check_chunk("gallery chunk", gallery_chunk)
    dev = resolve_device(device)

    def rows(q0: int, q1: int) -> Callable[[int, int], torch.Tensor]:
        def block(g0: int, g1: int) -> torch.Tensor:
            scores = None
            for weight, matrix in zip(weights, matrices):
                part = torch.from_numpy(np.array(matrix[q0:q1, g0:g1], dtype=np.float32)).to(dev)
                scores = part * weight if scores is None else scores.add_(part, alpha=weight)
            _check_finite("saved scores", scores)
            return scores

        return block

    return _blockwise_topk(shape, k, rows, query_chunk=query_chunk, gallery_chunk=gallery_chunk,
                           device=dev, progress=progress)


def _blockwise_topk(
    shape: tuple[int, int],
    k: int,
    rows: Callable[[int, int], Callable[[int, int], torch.Tensor]],
    *,
    query_chunk: int,
    gallery_chunk: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None,
) -> TopK:
    """The loop both top-k functions share: for each query chunk ``[q0, q1)``, ``rows(q0, q1)``
    gives the function that scores gallery columns ``[g0, g1)`` of it; blocks are merged in
    increasing column order into a running top-k."""
    n_queries, n_gallery = shape
    all_scores = torch.empty(n_queries, k, dtype=torch.float32)
    all_indices = torch.empty(n_queries, k, dtype=torch.int64)
    for q0 in range(0, n_queries, query_chunk):
        q1 = min(q0 + query_chunk, n_queries)
        block = rows(q0, q1)
        running = RunningTopK(q1 - q0, k, device)
        for g0 in range(0, n_gallery, gallery_chunk):
            running.update(block(g0, min(g0 + gallery_chunk, n_gallery)), g0)
        all_scores[q0:q1] = running.scores.cpu()
        all_indices[q0:q1] = running.indices.cpu()
        if progress is not None:
            progress(q1, n_queries)
    return TopK(all_scores, all_indices)


class ScoreMatrixWriter:
    """Writes score blocks into a ``.npy`` file through a memory map, then renames it into place.

    The matrix is first written under a temporary name, so a run that stops half way never
    leaves a file that looks complete (the ensemble reuses any matrix it finds).
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], dtype: str = "float32"):
        if dtype not in SCORE_DTYPES:
            raise ValueError(f"score dtype must be one of {sorted(SCORE_DTYPES)}, got {dtype!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.shape = shape
        self._map = np.lib.format.open_memmap(
            self.partial, mode="w+", dtype=SCORE_DTYPES[dtype], shape=shape
        )
        self._written = 0

    def write(self, q0: int, g0: int, block: torch.Tensor) -> None:
        rows, cols = block.shape
        self._map[q0 : q0 + rows, g0 : g0 + cols] = block.detach().float().cpu().numpy()
        self._written += rows * cols

    def close(self) -> Path:
        """Flush and move into place; fails if some block was never written."""
        expected = self.shape[0] * self.shape[1]
        self._map.flush()
        del self._map
        if self._written != expected:
            self.partial.unlink(missing_ok=True)
            raise RuntimeError(
                f"score matrix {self.path} incomplete: {self._written} of {expected} scores written"
            )
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        if hasattr(self, "_map"):
            del self._map
        self.partial.unlink(missing_ok=True)


def open_score_matrix(path: str | os.PathLike) -> np.ndarray:
    """A saved score matrix as a read-only memory map (nothing is loaded until used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score matrix not found: {path}")
    try:
        matrix = np.load(path, mmap_mode="r")
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable .npy score matrix: {exc}") from exc
    if matrix.ndim != 2:
        raise ValueError(f"{path} holds a {matrix.ndim}-D array, expected a 2-D score matrix")
    return matrix
