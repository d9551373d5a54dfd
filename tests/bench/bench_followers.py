"""Many followers of job events against the job API: ``--followers`` concurrent SSE clients
(1,000 by default) follow ``--jobs`` running jobs (10) while the jobs emit events, and
``GET /jobs`` is timed at ``--rate`` requests/s. The reference is ``GET /jobs`` at the same
rate in the same run before any follower connects. Targets: p99 <= 100 ms with the
followers connected, and no stream cut (every follower gets every event, in order, and its
stream ends with the job). Prints one JSON object on the last line.

    .venv/bin/python tests/bench/bench_followers.py [--followers 1000] [--jobs 10] [--seconds 10]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
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
from shared.messages import JobEvent  # noqa: E402
from tests.bench.bench_status import load, percentile  # noqa: E402
from tests.control.conftest import ControlServer  # noqa: E402
from tests.helpers import RedisServer  # noqa: E402


async def _follow_all(base_url: str, headers: dict, job_ids: list[str], followers: int,
                      opened: "multiprocessing.Value") -> list[dict]:
    """Each follower's outcome: HTTP status, the steps it saw, whether its stream ended with
    the job's final state (anything else is a cut stream)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(60, read=120)) as client:
        async def one(i: int) -> dict:
            outcome = {"status": 0, "steps": [], "ended": False, "error": ""}
            current: dict = {}
            try:
                async with client.stream("GET", f"/jobs/{job_ids[i % len(job_ids)]}/events") as response:
                    outcome["status"] = response.status_code
                    if response.status_code != 200:
                        return outcome
                    counted = False
                    async for line in response.aiter_lines():
                        if line:
                            key, _, value = line.partition(":")
                            current[key] = value.strip()
                            continue
                        if "data" not in current:
                            current = {}
                            continue
                        if not counted:
                            counted = True
                            with opened.get_lock():
                                opened.value += 1
                        event = json.loads(current["data"]) if current.get("event") != "error" else None
                        if event is None:
                            outcome["error"] = current["data"][:200]
                        elif event["type"] == "train_step":
                            outcome["steps"].append(event["data"]["step"])
                        elif event["type"] == "state" and event["data"]["state"] == "succeeded":
                            outcome["ended"] = True
                        current = {}
            except httpx.HTTPError as exc:
                outcome["error"] = f"{type(exc).__name__}: {exc}"[:200]
            return outcome

        return await asyncio.gather(*(one(i) for i in range(followers)))


def _followers_process(base_url, headers, job_ids, followers, opened, results) -> None:
    results.put(asyncio.run(_follow_all(base_url, headers, job_ids, followers, opened)))


def _emit(store: JobStore, job_ids: list[str], stop: threading.Event, rate: float, sent: list[int]) -> None:
    """What the runners do: each job's steps as events, at ``rate`` per job per second."""
    step = 0
    while not stop.is_set():
        step += 1
        for job_id in job_ids:
            store.append_event(job_id, JobEvent(type="train_step", data={"step": step, "loss": 1.0 / step}))
        sent[0] = step
        time.sleep(1.0 / rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0, help="of GET /jobs load, each phase")
    parser.add_argument("--rate", type=float, default=20.0, help="GET /jobs requests per second")
    parser.add_argument("--event-rate", type=float, default=2.0, help="events per job per second")
    parser.add_argument("--ping-s", type=float, default=15.0, help="the service's SSE keep-alive interval")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-followers-"))
    redis_server = RedisServer(workdir / "redis").start()
    control = None
    stop = threading.Event()
    try:
        client = redis_lib.Redis.from_url(redis_server.url)
        store = JobStore(client)
        job_ids = []
        for i in range(args.jobs):
            record, _ = store.create(TrainSpec(train_data="datasets/d/lmdb/train", max_steps=100 + i))
            store.transition(record.id, "running", runner_host="bench", runner_pid=1)
            job_ids.append(record.id)
        # Keep-alive pings at the service's default interval (the tests' server pings every second).
        control = ControlServer(redis_server.url, workdir / "data",
                                env={"CNCLIP_CONTROL_SSE_PING_S": str(args.ping_s)}).start()
        reference, reference_errors = asyncio.run(load(control.base_url, control.headers, "/jobs",
                                                       args.rate, args.seconds))
        baseline_connections = len(client.client_list())

        opened = multiprocessing.Value("i", 0)
        results: multiprocessing.Queue = multiprocessing.Queue()
        process = multiprocessing.Process(target=_followers_process, daemon=True, args=(
            control.base_url, control.headers, job_ids, args.followers, opened, results))
        process.start()
        deadline = time.monotonic() + 120
        while opened.value < args.followers and time.monotonic() < deadline and process.is_alive():
            time.sleep(0.2)
        joined = opened.value
        sent = [0]
        writer = threading.Thread(target=_emit, args=(store, job_ids, stop, args.event_rate, sent), daemon=True)
        writer.start()
        loaded, loaded_errors = asyncio.run(load(control.base_url, control.headers, "/jobs",
                                                 args.rate, args.seconds))
        connections = len(client.client_list()) - baseline_connections
        stop.set()
        writer.join()
        for job_id in job_ids:
            store.transition(job_id, "succeeded")
        outcomes = results.get(timeout=300)
        process.join(30)
    finally:
        stop.set()
        if control is not None:
            control.stop()
        redis_server.stop()

    steps = list(range(1, sent[0] + 1))
    cut = sum(1 for o in outcomes if o["status"] != 200 or not o["ended"] or o["error"])
    missed = sum(1 for o in outcomes if o["status"] == 200 and o["steps"] != steps)
    refused = sum(1 for o in outcomes if o["status"] not in (0, 200))
    result = {
        "followers": args.followers,
        "jobs": args.jobs,
        "followers_joined_before_load": joined,
        "events_per_job": sent[0],
        "jobs_list_requests": len(loaded),
        "jobs_list_errors": loaded_errors,
        "jobs_list_p50_ms": round(statistics.median(loaded), 2) if loaded else None,
        "jobs_list_p99_ms": round(percentile(loaded, 99), 2) if loaded else None,
        "reference_no_followers_p50_ms": round(statistics.median(reference), 2),
        "reference_no_followers_p99_ms": round(percentile(reference, 99), 2),
        "reference_errors": reference_errors,
        "p99_ratio_vs_reference": round(percentile(loaded, 99) / max(percentile(reference, 99), 1e-6), 2)
        if loaded else None,
        "streams_cut": cut,
        "streams_refused": refused,
        "streams_missing_events": missed,
        "redis_connections_added_by_followers": connections,
        "target_p99_ms": 100.0,
        "target_streams_cut": 0,
    }
    result["meets_target"] = bool(loaded) and result["jobs_list_p99_ms"] <= 100.0 and cut == 0 \
        and missed == 0 and loaded_errors == 0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
