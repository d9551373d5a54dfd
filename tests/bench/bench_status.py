"""Latency of the status data endpoint (/api/status) at 100 requests/s while a running job
streams events (and a browser follows them over SSE), against /healthz at the same rate in the
same run as the reference. Target: p99 <= 50 ms. Then, with ``--list-jobs`` jobs recorded
(10,000), the p99 of filtered job lists (``GET /jobs?state=...``, ``?kind=...``, both) against
the unfiltered list in the same run. Target: p99 <= 100 ms for every filter. Prints one JSON
object on the last line.

    .venv/bin/python tests/bench/bench_status.py [--seconds 10] [--rate 100] [--list-jobs 10000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis as redis_lib

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from shared.jobs import JobStore  # noqa: E402
from shared.jobspec import TrainSpec  # noqa: E402
from shared.messages import JobEvent, LoginState  # noqa: E402
from shared import redis_keys  # noqa: E402
from tests.control.conftest import ControlServer  # noqa: E402
from tests.helpers import RedisServer  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def stream_events(store: JobStore, job_id: str, stop: threading.Event, rate: float) -> int:
    """What a runner does for a job: events into the stream, progress onto the record."""
    step = 0
    while not stop.is_set():
        step += 1
        store.append_event(job_id, JobEvent(type="train_step", data={
            "step": step, "total_steps": 100000, "loss": 3.0 / step, "lr": 1e-4, "samples_per_s": 900.0}))
        if step % 10 == 0:
            store.update(job_id, heartbeat_at=time.time(),
                         progress={"step": step, "total_steps": 100000, "loss": 3.0 / step})
        time.sleep(1.0 / rate)
    return step


def follow_sse(base_url: str, headers: dict, job_id: str, stop: threading.Event, seen: list[int]) -> None:
    try:
        with httpx.stream("GET", f"{base_url}/jobs/{job_id}/events", headers=headers, timeout=None) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    seen[0] += 1
                if stop.is_set():
                    return
    except httpx.HTTPError:
        return


async def load(base_url: str, headers: dict, path: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop: requests start on schedule whether or not earlier ones have finished."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=10) as client:
        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            try:
                response = await client.get(path)
                if response.status_code != 200:
                    errors += 1
                    return
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append((time.perf_counter() - start) * 1000)

        # Warm the connection pool and the server's caches first.
        await asyncio.gather(*(one() for _ in range(20)))
        latencies.clear()
        t0 = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, errors


LIST_FILTERS = ("state=running", "state=succeeded", "state=queued", "kind=predict",
                "kind=train&state=failed")


def record_jobs(store: JobStore, count: int) -> None:
    """``count`` jobs of both kinds in every state, as a long-lived service would hold."""
    from shared.jobspec import PredictSpec

    ends = ("succeeded", "failed", "cancelled")
    for i in range(count):
        spec = (TrainSpec(train_data="datasets/d/lmdb/train", max_steps=10 + i) if i % 3 else
                PredictSpec(mode="single", image_data="i", text_data="t", resume="r.pt", top_k=10 + i % 90))
        record, _ = store.create(spec)
        if i % 50 == 0:
            continue  # stays queued
        store.transition(record.id, "running")
        if i % 97 != 0:
            store.transition(record.id, ends[i % 3])


def list_latencies(base_url: str, headers: dict, rate: float, seconds: float) -> dict:
    out = {}
    for query in ("", *LIST_FILTERS):
        latencies, errors = asyncio.run(load(base_url, headers, "/jobs?limit=50&" + query, rate, seconds))
        out[query or "unfiltered"] = {"p50_ms": round(statistics.median(latencies), 2),
                                      "p99_ms": round(percentile(latencies, 99), 2), "errors": errors}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--event-rate", type=float, default=50.0)
    parser.add_argument("--list-jobs", type=int, default=10_000, help="jobs recorded for the list figures (0: none)")
    parser.add_argument("--list-rate", type=float, default=20.0)
    parser.add_argument("--list-seconds", type=float, default=5.0, help="per filter")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-status-"))
    redis_server = RedisServer(workdir / "redis").start()
    control = None
    stop = threading.Event()
    try:
        client = redis_lib.Redis.from_url(redis_server.url)
        store = JobStore(client)
        for rank in range(args.ranks):
            client.hset(redis_keys.crawler_login(rank), mapping=LoginState(rank=rank, state="logged_in").to_hash())
            client.sadd(redis_keys.crawler_ranks(), rank)
            client.hset(redis_keys.crawler_stats(rank), mapping={"pages": 100 * rank})
        job_ids = []
        for i in range(args.jobs):
            record, _ = store.create(TrainSpec(train_data="datasets/d/lmdb/train", max_steps=100 + i))
            job_ids.append(record.id)
        running = job_ids[-1]
        store.transition(running, "running", runner_host="bench", runner_pid=1)

        control = ControlServer(redis_server.url, workdir / "data").start()
        writer = threading.Thread(target=stream_events, args=(store, running, stop, args.event_rate), daemon=True)
        writer.start()
        seen = [0]
        follower = threading.Thread(target=follow_sse, args=(control.base_url, control.headers, running, stop, seen),
                                    daemon=True)
        follower.start()
        time.sleep(1.0)

        reference, reference_errors = asyncio.run(load(control.base_url, control.headers, "/healthz",
                                                       args.rate, args.seconds))
        status, status_errors = asyncio.run(load(control.base_url, control.headers, "/api/status",
                                                 args.rate, args.seconds))
        stop.set()
        sse_events = seen[0]
        lists = {}
        if args.list_jobs > 0:
            record_jobs(store, max(0, args.list_jobs - args.jobs))
            lists = list_latencies(control.base_url, control.headers, args.list_rate, args.list_seconds)
    finally:
        stop.set()
        if control is not None:
            control.stop()
        redis_server.stop()

    result = {
        "endpoint": "/api/status",
        "rate_rps": args.rate,
        "seconds": args.seconds,
        "jobs": args.jobs,
        "ranks": args.ranks,
        "status_requests": len(status),
        "status_errors": status_errors,
        "status_p50_ms": round(statistics.median(status), 2),
        "status_p99_ms": round(percentile(status, 99), 2),
        "reference_endpoint": "/healthz",
        "reference_errors": reference_errors,
        "reference_p50_ms": round(statistics.median(reference), 2),
        "reference_p99_ms": round(percentile(reference, 99), 2),
        "p99_ratio_vs_reference": round(percentile(status, 99) / max(percentile(reference, 99), 1e-6), 2),
        "sse_events_followed": sse_events,
        "target_p99_ms": 50.0,
    }
    result["meets_target"] = result["status_p99_ms"] <= 50.0 and status_errors == 0
    if lists:
        filtered = [v["p99_ms"] for k, v in lists.items() if k != "unfiltered"]
        result.update({
            "list_jobs": args.list_jobs,
            "list_rate_rps": args.list_rate,
            "list": lists,
            "list_filtered_worst_p99_ms": max(filtered),
            "list_filtered_worst_p99_vs_unfiltered": round(max(filtered) / max(lists["unfiltered"]["p99_ms"], 1e-6), 2),
            "list_target_p99_ms": 100.0,
            "list_meets_target": max(filtered) <= 100.0 and not any(v["errors"] for v in lists.values()),
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
