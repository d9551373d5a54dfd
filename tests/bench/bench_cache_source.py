"""Cache-mode image source: how much of reading the cache hides behind the learner's step.

A cache of ``--queries`` queries with 5 crawled pictures each (224 px JPEGs from the synthetic
renderer), a leakage guard over a ``--gallery``-sized gallery, batches of ``--batch`` queries
and a learner step simulated by sleeping ``--step-ms`` per batch. Measured: the wall time of a
pass with reads ahead in a worker thread (``read_ahead = window``) against the reference run in
the same script, the same pass reading each entry when ``take`` asks (``read_ahead = 0``), and
against the steps alone (the floor).

Usage: python tests/bench/bench_cache_source.py [--queries 512] [--batch 64] [--step-ms 400]
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.trainer.online.leakage import LeakageGuard  # noqa: E402
from services.trainer.online.sources import CacheSource  # noqa: E402
from shared.image_cache import ImageCache  # noqa: E402
from shared.image_validation import prepare_image  # noqa: E402
from shared.synthetic.attributes import random_attrs  # noqa: E402
from shared.synthetic.render import render_product  # noqa: E402


def _pass(source: CacheSource, queries: list[str], batch: int, step_s: float) -> tuple[float, dict]:
    started = time.perf_counter()
    source.start_pass("valid", queries, pass_index=0)
    for i in range(0, len(queries), batch):
        got = source.take(queries[i:i + batch])
        assert all(f.ok for f in got.values())
        time.sleep(step_s)  # the learner's step on this batch
    counts = source.end_pass()
    return time.perf_counter() - started, counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--step-ms", type=float, default=400)
    parser.add_argument("--gallery", type=int, default=30_000)
    parser.add_argument("--workers", type=int, default=4, help="read-ahead threads (at most the CPUs)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    rng = random.Random(0)
    pool = []
    for _ in range(40):
        out = io.BytesIO()
        render_product(random_attrs(rng), rng, 300).save(out, "JPEG", quality=90)
        pool.append(prepare_image(out.getvalue()))
    queries = [f"查询 {i}" for i in range(args.queries)]
    hashes = np.random.default_rng(0).integers(0, 2**63, size=(args.gallery, 4), dtype=np.uint64)
    guard = LeakageGuard(list(hashes))
    step_s = args.step_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        cache = ImageCache(tmp, "valid")
        for i, query in enumerate(queries):
            cache.put(query, [pool[(i + k) % len(pool)] for k in range(5)])
        ahead = CacheSource(Path(tmp), 5, guard, read_ahead=args.batch, read_ahead_workers=args.workers)
        inline = CacheSource(Path(tmp), 5, guard, read_ahead=0)
        _pass(inline, queries[: args.batch], args.batch, 0)  # warm the page cache and imports
        # Alternated and repeated, best of each: other load on the machine comes and goes.
        inline_runs, ahead_runs = [], []
        for _ in range(args.repeats):
            inline_runs.append(_pass(inline, queries, args.batch, step_s)[0])
            elapsed, counts = _pass(ahead, queries, args.batch, step_s)
            ahead_runs.append(elapsed)
        inline_s, ahead_s = min(inline_runs), min(ahead_runs)
        ahead.close()
        inline.close()
    steps_s = step_s * -(-len(queries) // args.batch)
    print(json.dumps({
        "queries": len(queries), "images_per_query": 5, "batch": args.batch, "step_ms": args.step_ms,
        "gallery": args.gallery, "read_ahead_workers": min(args.workers, os.cpu_count() or 1), "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0], "steps_only_s": round(steps_s, 3),
        "read_ahead_s": round(ahead_s, 3), "inline_s": round(inline_s, 3),
        "speedup_vs_inline": round(inline_s / ahead_s, 3),
        "read_ahead_over_steps": round(ahead_s / steps_s, 3),
        "inline_over_steps": round(inline_s / steps_s, 3),
        "cache_hits": counts["cache_hits"],
    }))


if __name__ == "__main__":
    main()
