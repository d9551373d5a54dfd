"""How the search service sizes torch's and FAISS's thread teams (services/search/compute.py)."""
from __future__ import annotations

import os

import faiss
import numpy as np
import torch

from services.search.compute import BLAS_FROM_QUERIES, configure, inference_threads


def test_threads_default_to_half_the_usable_cpus():
    usable = len(os.sched_getaffinity(0))
    assert inference_threads(0) == max(1, usable // 2)
    assert inference_threads(3) == 3


def test_configure_sets_both_teams_and_exact_search_stays_exact():
    before = torch.get_num_threads(), faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
    try:
        assert configure(1) == 1
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
        assert faiss.cvar.distance_compute_blas_threshold == BLAS_FROM_QUERIES
        # One query through the matrix product finds what the row-by-row path finds.
        rows = np.random.default_rng(0).standard_normal((5000, 32)).astype(np.float32)
        index = faiss.IndexFlatIP(32)
        index.add(rows)
        query = rows[:3] + 0.01
        blas_scores, blas_ids = index.search(query, 10)
        faiss.cvar.distance_compute_blas_threshold = 20
        plain_scores, plain_ids = index.search(query, 10)
        np.testing.assert_array_equal(blas_ids, plain_ids)
        np.testing.assert_allclose(blas_scores, plain_scores, rtol=1e-5)
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
        faiss.cvar.distance_compute_blas_threshold = before[2]
