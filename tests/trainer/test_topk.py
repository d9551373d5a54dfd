from __future__ import annotations

import numpy as np
import pytest
import torch

from services.trainer.predict.topk import (
    RunningTopK,
    ScoreMatrixWriter,
    chunked_topk,
    fused_topk,
    open_score_matrix,
)


def brute_force(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    """Full score matrix, stable descending sort: ties rank the lower gallery index first."""
    scores = queries @ gallery.T
    values, indices = torch.sort(scores, dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def normalised(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize(
    "n_queries,n_gallery,k,query_chunk,gallery_chunk",
    [
        (37, 101, 10, 8, 16),
        (5, 10, 10, 2, 3),  # k == N, gallery chunks smaller than k
        (64, 300, 1, 64, 300),  # one block
        (13, 257, 25, 1, 7),
        (0, 20, 5, 4, 4),  # no queries
    ],
)
def test_chunked_topk_equals_brute_force(n_queries, n_gallery, k, query_chunk, gallery_chunk):
    q, g = normalised(n_queries, 16, 1), normalised(n_gallery, 16, 2)
    result = chunked_topk(q, g, k, query_chunk=query_chunk, gallery_chunk=gallery_chunk)
    ref_v, ref_i = brute_force(q, g, k)
    assert result.indices.shape == (n_queries, k)
    assert torch.equal(result.indices, ref_i)
    torch.testing.assert_close(result.scores, ref_v, rtol=0, atol=1e-6)


def test_ties_rank_lower_gallery_index_first():
    # Integer-valued features make many exact ties, across and within chunks.
    g = torch.randint(0, 3, (200, 4)).float()
    q = torch.randint(0, 3, (30, 4)).float()
    for gallery_chunk in (1, 7, 64, 200):
        result = chunked_topk(q, g, 12, query_chunk=7, gallery_chunk=gallery_chunk)
        ref_v, ref_i = brute_force(q, g, 12)
        assert torch.equal(result.indices, ref_i), gallery_chunk
        assert torch.equal(result.scores, ref_v)


def test_all_equal_scores_give_first_indices():
    g = torch.ones(50, 3)
    q = torch.ones(4, 3)
    result = chunked_topk(q, g, 10, gallery_chunk=16)
    assert result.indices.tolist() == [list(range(10))] * 4


def test_running_topk_merges_blocks_in_order():
    running = RunningTopK(1, 3)
    running.update(torch.tensor([[0.5, 0.9, 0.1]]), 0)
    running.update(torch.tensor([[0.9, 0.95]]), 3)
    assert running.indices.tolist() == [[4, 1, 3]]
    assert running.scores[0].tolist() == pytest.approx([0.95, 0.9, 0.9])


def test_k_larger_than_gallery_is_an_error():
    with pytest.raises(ValueError, match="top-k 11 is larger than the gallery \\(10 images\\)"):
        chunked_topk(normalised(3, 8, 0), normalised(10, 8, 1), 11)
    with pytest.raises(ValueError, match="at least 1"):
        chunked_topk(normalised(3, 8, 0), normalised(10, 8, 1), 0)
    with pytest.raises(ValueError, match="gallery is empty"):
        chunked_topk(normalised(3, 8, 0), torch.empty(0, 8), 1)


def test_bad_features_are_rejected():
    with pytest.raises(ValueError, match="feature sizes differ"):
        chunked_topk(normalised(3, 8, 0), normalised(10, 4, 1), 2)
    bad = normalised(3, 8, 0)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="query features contain NaN"):
        chunked_topk(bad, normalised(10, 8, 1), 2)
    with pytest.raises(ValueError, match="query chunk must be at least 1"):
        chunked_topk(normalised(3, 8, 0), normalised(10, 8, 1), 2, query_chunk=0)


class RecordingSink:
    def __init__(self):
        self.blocks: list[tuple[int, int, tuple[int, int]]] = []

    def write(self, q0, g0, block):
        self.blocks.append((q0, g0, tuple(block.shape)))


def test_chunk_sizes_bound_every_score_block():
    """No block larger than query_chunk x gallery_chunk is ever formed, and the blocks tile
    the whole matrix exactly once."""
    sink = RecordingSink()
    chunked_topk(normalised(50, 8, 0), normalised(333, 8, 1), 5, query_chunk=16, gallery_chunk=40, sink=sink)
    assert max(r for _, _, (r, _) in sink.blocks) <= 16
    assert max(c for _, _, (_, c) in sink.blocks) <= 40
    covered = np.zeros((50, 333), dtype=int)
    for q0, g0, (r, c) in sink.blocks:
        covered[q0 : q0 + r, g0 : g0 + c] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("dtype,atol", [("float32", 0.0), ("float16", 1e-3)])
def test_score_matrix_written_chunk_by_chunk(tmp_path, dtype, atol):
    q, g = normalised(21, 8, 3), normalised(45, 8, 4)
    path = tmp_path / "scores.npy"
    writer = ScoreMatrixWriter(path, (21, 45), dtype)
    chunked_topk(q, g, 5, query_chunk=4, gallery_chunk=10, sink=writer)
    assert not path.exists()  # only complete matrices appear under the final name
    writer.close()
    saved = open_score_matrix(path)
    assert saved.dtype == np.dtype(dtype)
    np.testing.assert_allclose(saved.astype(np.float32), (q @ g.T).numpy(), rtol=0, atol=max(atol, 1e-6))
    assert not (tmp_path / "scores.npy.partial").exists()


def test_incomplete_score_matrix_is_not_kept(tmp_path):
    path = tmp_path / "scores.npy"
    writer = ScoreMatrixWriter(path, (4, 4))
    writer.write(0, 0, torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="incomplete: 8 of 16"):
        writer.close()
    assert not path.exists() and not (tmp_path / "scores.npy.partial").exists()


def test_fused_topk_equals_weighted_full_sum(tmp_path):
    mats = [np.random.default_rng(i).standard_normal((30, 77)).astype(np.float32) for i in range(3)]
    paths = []
    for i, m in enumerate(mats):
        paths.append(tmp_path / f"m{i}.npy")
        np.save(paths[-1], m)
    weights = [0.2, 0.5, 0.3]
    result = fused_topk([open_score_matrix(p) for p in paths], weights, 10, query_chunk=7, gallery_chunk=20)
    full = torch.from_numpy(sum(w * m for w, m in zip(weights, mats)))
    ref_v, ref_i = torch.sort(full, dim=1, descending=True, stable=True)
    assert torch.equal(result.indices, ref_i[:, :10])
    torch.testing.assert_close(result.scores, ref_v[:, :10], rtol=0, atol=1e-5)


def test_fused_topk_rejects_mismatched_inputs(tmp_path):
    a, b = np.zeros((3, 5), np.float32), np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match="shape"):
        fused_topk([a, b], [1, 1], 2)
    with pytest.raises(ValueError, match="2 score matrices but 1 weights"):
        fused_topk([a, a], [1], 2)
    c = a.copy()
    c[1, 1] = np.inf
    with pytest.raises(ValueError, match="saved scores contain NaN or infinite"):
        fused_topk([c], [1], 2)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="not a readable .npy"):
        open_score_matrix(bad)


class RecordingMatrix:
    """A score matrix that records every block read from it."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.ndim, self.reads = array, array.shape, array.ndim, []

    def __getitem__(self, key):
        block = self.array[key]
        self.reads.append(block.shape)
        return block


def test_fusion_reads_bounded_blocks():
    rng = np.random.default_rng(0)
    mats = [RecordingMatrix(rng.standard_normal((70, 500)).astype(np.float16)) for _ in range(2)]
    fused_topk(mats, [0.5, 0.5], 10, query_chunk=32, gallery_chunk=128)
    for m in mats:
        assert max(r for r, _ in m.reads) <= 32 and max(c for _, c in m.reads) <= 128
        assert sum(r * c for r, c in m.reads) == 70 * 500  # every score read exactly once
