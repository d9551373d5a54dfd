"""Crawl throughput: queries per minute with one and with two crawler worker processes, and
the pages per hour one account gets under the Taobao profile's default pace.

Real Redis, the demo shop, Celery workers with headless Chromium, 5 images per query and no
politeness delay (the shop profile's default). The figure that matters is the ratio of the two
runs, measured in this script on this machine; absolute rates depend on the machine's load.

    .venv/bin/python tests/bench/bench_crawl.py [--queries 60]

The account's pace is the budget's own decision (services/crawler/budget.py, real Redis)
replayed over a simulated day: each page is taken as soon as the budget allows it, so the
figures are the ceiling the default pace sets, not what a site with sliders would leave.

Prints one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures_crawler import CrawlClient, CrawlerWorker, log_in  # noqa: E402
from tests.fixtures_shop import ShopServer  # noqa: E402
from tests.helpers import RedisServer  # noqa: E402

COLOURS = ["红色", "蓝色", "绿色", "黑色", "白色", "黄色", "紫色", "灰色", "粉色", "橙色"]
THINGS = ["T恤", "连衣裙", "杯子", "背包", "帽子", "鞋子", "衬衫", "裙子", "外套", "围巾"]


def queries(tag: str, count: int) -> list[str]:
    return [f"{COLOURS[i % 10]} {THINGS[(i // 10) % 10]} {tag}{i}" for i in range(count)]


def cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, dict[int, float]]:
    """CPU time (user + system) of each process, by component."""
    out: dict[str, dict[int, float]] = {}
    for component, procs in processes.items():
        out[component] = {}
        for proc in procs:
            try:
                times = proc.cpu_times()
                out[component][proc.pid] = times.user + times.system
            except psutil.Error:
                continue
    return out


def default_pace_per_account(redis_url: str, profile: str = "taobao") -> dict:
    """Pages one account may load per hour under ``profile``'s default [pace], from the
    account budget itself over a simulated 24 hours (two ranks sharing the account)."""
    import redis as redis_lib

    from services.crawler.budget import AccountBudget
    from services.crawler.profile import load_profile

    pace = load_profile(profile).pace
    politeness = load_profile(profile).politeness
    client = redis_lib.Redis.from_url(redis_url)
    now = [1_000_000.0]
    ranks = [AccountBudget(client, lambda: "bench-account", pace.max_pages_per_hour,
                           pace.max_pages_per_day, pace.min_page_gap_s, pace.search_cooldown_s,
                           clock=lambda: now[0]) for _ in range(2)]
    start, times = now[0], []
    while now[0] < start + 24 * 3600:
        for budget in ranks:
            delay = budget.reserve_page()
            if delay <= 0:
                times.append(now[0] - start)
                # A person's rhythm between two pages of one rank comes on top.
                now[0] += politeness.min_interval_s
            else:
                now[0] += delay
    client.close()
    first_hour = sum(1 for t in times if t < 3600)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"profile": profile, "ranks_sharing_the_account": 2,
            "max_pages_per_hour": pace.max_pages_per_hour, "max_pages_per_day": pace.max_pages_per_day,
            "min_page_gap_s": pace.min_page_gap_s,
            "pages_first_hour": first_hour, "pages_per_24h": len(times),
            "pages_per_hour_over_24h": round(len(times) / 24, 2),
            "shortest_gap_s": round(min(gaps), 1) if gaps else None}


def run(client: CrawlClient, ranks: list[int], texts: list[str], images: int,
        components) -> dict:
    """``components()`` names the processes whose CPU time is accounted (a callable, since
    browsers start child processes while they work)."""
    job = f"bench-{len(ranks)}-{time.time_ns()}"
    before = cpu_seconds(components())
    started = time.monotonic()
    requests = [client.submit(text, n_images=images, job_id=job, deadline_s=600) for text in texts]
    results = client.wait_results(requests[0].reply_stream, len(requests), timeout=900)
    elapsed = time.monotonic() - started
    after = cpu_seconds(components())
    cpu = {name: round(sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in per_pid.items())
                       / len(texts), 4)
           for name, per_pid in after.items()}
    ok = sum(r.status == "ok" for r in results)
    by_rank = {rank: sum(r.rank == rank for r in results) for rank in ranks}
    return {"queries": len(texts), "ok": ok, "seconds": round(elapsed, 2),
            "queries_per_min": round(len(texts) / elapsed * 60, 1), "by_rank": by_rank,
            "cpu_seconds_per_query": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=60, help="queries per browser and run")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating 1- and 2-worker runs")
    parser.add_argument("--site-latency", type=float, default=0.5,
                        help="page delay of the extra latency-bound run (0: skip it)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-crawl-"))
    redis_server = RedisServer(workdir / "redis").start()
    shop = ShopServer().start()
    client = CrawlClient(redis_server.url)
    workers: list[CrawlerWorker] = []
    try:
        for rank in (0, 1):
            worker = CrawlerWorker(redis_server.url, shop.base_url, workdir / f"w{rank}",
                                   rank=rank, mode="headless",
                                   env={"CNCLIP_CRAWLER_MIN_INTERVAL_S": "0",
                                        "CNCLIP_CRAWLER_JITTER_S": "0"})
            workers.append(worker.start())
            log_in(client, shop, rank)

        def components() -> dict[str, list[psutil.Process]]:
            found = {"shop": [psutil.Process(shop.proc.pid)],
                     "redis": [psutil.Process(redis_server.proc.pid)]}
            for worker in workers:
                if not worker.alive():
                    continue
                for proc in worker.processes():
                    name = proc.name()
                    kind = "browser" if name.startswith(("chrom", "Xvfb")) else "worker"
                    found.setdefault(kind, []).append(proc)
            return found

        # One browser, then two, alternating for --rounds rounds; the best run of each counts,
        # which keeps other load on a shared machine from deciding the ratio.
        load_before = os.getloadavg()
        ones, twos = [], []
        for round_index in range(args.rounds):
            if workers[1].alive():
                leftovers = workers[1].stop()
                assert not leftovers, leftovers
            run(client, [0], queries(f"warm{round_index}-", 3), args.images, components)
            ones.append(run(client, [0], queries(f"a{round_index}-", args.queries), args.images,
                            components))
            workers[1].start(wait_for=("logged_in",))
            run(client, [0, 1], queries(f"warm2{round_index}-", 4), args.images, components)
            twos.append(run(client, [0, 1], queries(f"b{round_index}-", 2 * args.queries),
                            args.images, components))
        # The same with a site that takes --site-latency seconds per page (as a real one does):
        # crawling is then bound by waiting, not by this machine's CPUs.
        latency = {}
        if args.site_latency > 0:
            shop.set_faults(page_delay_s=args.site_latency)
            count = max(8, args.queries // 4)
            latency["two"] = run(client, [0, 1], queries("lat2-", 2 * count), args.images, components)
            leftovers = workers[1].stop()
            assert not leftovers, leftovers
            latency["one"] = run(client, [0], queries("lat1-", count), args.images, components)
            shop.clear_faults()
        load_after = os.getloadavg()
        account_pace = default_pace_per_account(redis_server.url)
    finally:
        client.close()
        leftovers = []
        for worker in workers:
            leftovers += worker.stop()
        shop.stop()
        redis_server.stop()
    one = max(ones, key=lambda r: r["queries_per_min"])
    two = max(twos, key=lambda r: r["queries_per_min"])
    speedup = two["queries_per_min"] / one["queries_per_min"]
    summary = {
        "benchmark": "crawl",
        "images_per_query": args.images,
        "cpu_count": os.cpu_count(),
        "load_average_1min": [round(load_before[0], 1), round(load_after[0], 1)],
        "rounds": args.rounds,
        "one_worker_runs_qpm": [r["queries_per_min"] for r in ones],
        "two_worker_runs_qpm": [r["queries_per_min"] for r in twos],
        "one_worker_best": one,
        "two_workers_best": two,
        "queries_per_min_per_browser_1": one["queries_per_min"],
        "queries_per_min_total_2": two["queries_per_min"],
        "speedup_2_vs_1": round(speedup, 2),
        "target_queries_per_min_1": 60,
        "target_speedup": 1.6,
        "meets_rate_target": one["queries_per_min"] >= 60,
        "meets_speedup_target": speedup >= 1.6,
        "orphan_processes": leftovers,
        "pages_per_hour_per_account_default_pace": account_pace,
    }
    if latency:
        summary["with_site_latency"] = {
            "page_delay_s": args.site_latency,
            "queries_per_min_1": latency["one"]["queries_per_min"],
            "queries_per_min_2": latency["two"]["queries_per_min"],
            "speedup_2_vs_1": round(latency["two"]["queries_per_min"]
                                    / latency["one"]["queries_per_min"], 2),
        }
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
