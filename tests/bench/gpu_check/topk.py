"""Step 5: prediction's chunked top-k (services.trainer.predict.topk.chunked_topk) on this device.

Random L2-normalised fp32 features (the gallery is 1M x 512 and the queries 50k x 512 at full
scale) are made on the device, then top-10 of every query is taken with the default chunks and
with larger ones. Reported: wall time, the peak memory the top-k adds over the features, and, for
the first queries, agreement with a full-matrix torch.topk and the time ratio against it (the
reference holds the whole score block for those queries at once).
"""
from __future__ import annotations

import time

import torch

from tests.bench.gpu_check.common import (
    SIZES, Deadline, check_device, guarded, parse_args, peak_memory_bytes, reset_peak_memory, synchronize,
    write_result,
)

K = 10
SCORE_TOLERANCE = 1e-5
MIN_SAME_ROWS = 0.99
LARGE_CHUNKS = {"query_chunk": 4096, "gallery_chunk": 65536}


def normalised(rows: int, dim: int, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, dim, device=device, generator=generator)
    return x.div_(x.norm(dim=1, keepdim=True))


def timed_topk(queries, gallery, device, **chunks) -> tuple[object, dict]:
    from services.trainer.predict.topk import chunked_topk

    synchronize(device)
    reset_peak_memory(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    start = time.perf_counter()
    result = chunked_topk(queries, gallery, K, device=device, **chunks)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes(device)
    return result, {
        **chunks, "seconds": round(seconds, 3), "queries_per_s": round(queries.shape[0] / seconds, 1),
        "peak_extra_memory_gib": None if peak is None else round((peak - before) / 2**30, 3),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes, device = SIZES[args.scale], check_device()
    deadline = Deadline(args.budget_s)
    gallery = normalised(sizes.topk_gallery, sizes.topk_dim, device, seed=1)
    queries = normalised(sizes.topk_queries, sizes.topk_dim, device, seed=2)
    result: dict = {"scale": args.scale, "device": str(device), "gallery": sizes.topk_gallery,
                    "queries": sizes.topk_queries, "dim": sizes.topk_dim, "k": K, "dtype": "float32",
                    "features_gib": round((gallery.numel() + queries.numel()) * 4 / 2**30, 3)}
    # Warm-up: CUDA context, cuBLAS handles, first kernels.
    guarded(lambda: timed_topk(queries[:256], gallery[:16384], device))

    default = guarded(lambda: timed_topk(queries, gallery, device))
    if isinstance(default, dict):  # an error record
        result["default_chunks"] = default
    else:
        top, figures = default
        result["default_chunks"] = figures
        result["reference"] = guarded(lambda: against_full_matrix(top, queries, gallery, figures, sizes, device))
    if not deadline.passed():
        large = guarded(lambda: timed_topk(queries, gallery, device, **LARGE_CHUNKS))
        result["large_chunks"] = large if isinstance(large, dict) else large[1]
    else:
        result["large_chunks"] = {"skipped": "time budget spent"}
    reference = result.get("reference", {})
    result["ok"] = bool(reference.get("agrees"))
    write_result(args.out, result)


def against_full_matrix(top, queries, gallery, figures: dict, sizes, device) -> dict:
    """The first queries' top-k from the whole score block, and how long that took per query."""
    n = sizes.topk_reference_queries
    synchronize(device)
    start = time.perf_counter()
    values, indices = torch.topk(queries[:n] @ gallery.T, K, dim=1)
    synchronize(device)
    seconds = time.perf_counter() - start
    same_rows = (indices.cpu() == top.indices[:n]).all(dim=1).float().mean().item()
    score_diff = (values.cpu() - top.scores[:n]).abs().max().item()
    chunked_per_query = figures["seconds"] / queries.shape[0]
    return {
        "queries": n, "rows_with_same_indices": same_rows, "max_score_diff": score_diff,
        # Blocks of another shape may round a score differently in the last bit, which can swap two
        # near-equal neighbours; the scores must still agree.
        "agrees": score_diff <= SCORE_TOLERANCE and same_rows >= MIN_SAME_ROWS,
        "full_matrix_seconds": round(seconds, 4),
        # Per-query time of the chunked top-k over that of the full-matrix reference (lower is faster).
        "chunked_over_full_matrix_per_query": round(chunked_per_query / (seconds / n), 3),
    }


if __name__ == "__main__":
    main()
