"""How the service spends the CPU.

One thread (services/search/batching.py) runs the text tower and the FAISS search for every text
query; the event loop parses requests and writes answers beside it. Torch and FAISS each start
an OpenMP team as wide as the machine by default: on a small or shared machine those teams then
spin against the event loop and each other, and the slowest requests wait for a descheduled
worker (on 2 busy cores p99 was several times p50). So they get ``threads`` each, by default
half the CPUs this process may use (at least one), leaving the rest to HTTP.

FAISS's exact search computes inner products row by row for fewer than 20 queries at once and
switches to one matrix product (BLAS) from 20 on; the batcher mostly hands it fewer, so the
switch is moved to one query: a matrix product reads the gallery once per batch instead of once
per query.
"""
from __future__ import annotations

import os

BLAS_FROM_QUERIES = 1


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def inference_threads(requested: int) -> int:
    """``requested`` threads, or (0) half the usable CPUs, at least one."""
    return requested if requested > 0 else max(1, usable_cpus() // 2)


def configure(requested: int) -> int:
    """Sets torch's and FAISS's thread counts and FAISS's BLAS switch; returns the thread count."""
    import faiss
    import torch

    threads = inference_threads(requested)
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES
    return threads
