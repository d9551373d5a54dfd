"""No lost work and no orphans: SIGKILL of the task process and of the whole worker in the
middle of crawls, then a restart; every request's result arrives exactly once, and no
Chromium, chromedriver or Xvfb outlives the process that owned it."""
from __future__ import annotations

import os
import time
from collections import Counter

import psutil
import pytest

from shared import redis_keys
from tests.fixtures_crawler import CrawlClient, CrawlerWorker, log_in
from tests.helpers import RedisServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BROWSER_NAMES = {"chromium", "chromedriver", "Xvfb", "chrome_crashpad_handler", "chrome_crashpad"}
SETTINGS = {
    # A short visibility timeout so a dead worker's task returns within the test's patience;
    # production keeps it above the longest task (see services/crawler/celery_app.py).
    "CNCLIP_CRAWLER_TASK_TIME_LIMIT_S": "20",
    "CNCLIP_CRAWLER_VISIBILITY_TIMEOUT_S": "25",
    "CNCLIP_CRAWLER_UNACKED_RESTORE_INTERVAL_S": "1",
}


def browser_processes(worker: CrawlerWorker) -> list[psutil.Process]:
    found = []
    for process in worker.processes():
        try:
            if process.name() in BROWSER_NAMES:
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(processes: list[psutil.Process], timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if running(p)]
    return [f"{p.pid} {p.info.get('name', '') if hasattr(p, 'info') else ''}" for p in alive]


def wait_busy(client, rank: int, timeout: float = 60.0) -> str:
    """The request the rank is crawling right now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = client.redis.hget(redis_keys.crawler_stats(rank), "current")
        if current:
            return current.decode()
        time.sleep(0.05)
    raise TimeoutError("the worker never started a crawl")


def test_sigkill_mid_crawl_then_restart_delivers_every_result_once(
        redis_url, shop, crawl_client, tmp_path):
    workdir = tmp_path / "worker"
    worker = CrawlerWorker(redis_url, shop.base_url, workdir, rank=0, mode="xvfb", env=SETTINGS)
    worker.start()
    restarted = None
    try:
        log_in(crawl_client, shop, 0)
        shop.set_faults(page_delay_s=1.0)   # each crawl takes a while, so kills land mid-crawl
        requests = [crawl_client.submit(f"红色 裙子 {i}", n_images=3, job_id="killjob")
                    for i in range(6)]
        stream = requests[0].reply_stream

        # 1. SIGKILL the task process: its browser goes with it, the task goes back at once.
        wait_busy(crawl_client, 0)
        old_browser = browser_processes(worker)
        assert {p.name() for p in old_browser} >= {"chromium", "chromedriver", "Xvfb"}
        killed = worker.kill_pool_process()
        assert wait_gone(old_browser) == []
        assert not psutil.pid_exists(killed) or not running(psutil.Process(killed))

        # The worker replaces its pool process, which logs in again from the saved cookies.
        crawl_client.wait_login_state(0, {"logged_in"}, timeout=60, after=time.time())
        crawl_client.wait_results(stream, 2, timeout=60)

        # 2. SIGKILL the whole worker mid-crawl: nothing of it may survive.
        wait_busy(crawl_client, 0)
        doomed_browser = browser_processes(worker)
        profiles = {arg.split("=", 1)[1] for p in doomed_browser for arg in p.cmdline()
                    if arg.startswith("--user-data-dir=")}
        assert profiles
        worker.kill()
        assert wait_gone(doomed_browser) == []
        assert wait_gone(worker.processes()) == []     # the reaper too, once it cleaned up
        assert [d for d in profiles if os.path.exists(d)] == []   # browser profiles removed too

        # 3. A new worker: queued tasks run at once, the one the dead worker held returns
        #    after the visibility timeout.
        restarted = CrawlerWorker(redis_url, shop.base_url, workdir, rank=0, mode="headless",
                                  env=SETTINGS).start(wait_for=("logged_in",))
        results = crawl_client.wait_results(stream, len(requests), timeout=120)
        time.sleep(3.0)   # anything delivered twice would show up now
        results = crawl_client.results(stream)
        counts = Counter(r.request_id for r in results)
        assert counts == Counter({r.request_id: 1 for r in requests}), counts
        assert all(r.status == "ok" for r in results), [r.missing for r in results]
    finally:
        shop.clear_faults()
        leftovers = worker.stop()
        if restarted is not None:
            leftovers += restarted.stop()
        assert leftovers == []


def test_a_stopped_worker_leaves_no_process(crawler_workers, crawl_client, shop):
    worker = crawler_workers(rank=2, mode="xvfb")
    names = {p.name() for p in worker.processes()}
    assert {"chromium", "chromedriver", "Xvfb"} <= names
    tagged = worker.processes()
    assert worker.stop() == []
    # every process seen while it ran is gone (zombies awaiting their reaper do not count)
    assert wait_gone(tagged, timeout=1.0) == []


def test_a_crawl_over_the_time_limit_still_answers(crawler_workers, crawl_client, shop):
    crawler_workers(rank=0, env={"CNCLIP_CRAWLER_TASK_TIME_LIMIT_S": "6",
                                 "CNCLIP_CRAWLER_VISIBILITY_TIMEOUT_S": "30"})
    log_in(crawl_client, shop, 0)
    shop.set_faults(page_delay_s=3.0, search_error=-1)   # every search: slow, then an error
    stuck = crawl_client.submit("很慢 的 搜索", n_images=2, job_id="limit")
    result, = crawl_client.wait_results(stuck.reply_stream, 1, timeout=60)
    assert result.status == "failed"
    assert result.missing[0].reason.startswith("crawl took longer than"), result.missing
    shop.clear_faults()
    after = crawl_client.submit("正常 搜索", n_images=2, job_id="limit")
    results = crawl_client.wait_results(after.reply_stream, 2, timeout=60)
    assert results[-1].status == "ok", results[-1].missing


def test_the_worker_rides_out_a_redis_restart(shop, tmp_path):
    server = RedisServer(tmp_path / "redis").start()      # AOF on: queued work survives
    client = CrawlClient(server.url)
    worker = CrawlerWorker(server.url, shop.base_url, tmp_path / "w", rank=0).start()
    try:
        log_in(client, shop, 0)
        first = client.submit("红色 T恤", n_images=2, job_id="redis")
        client.wait_results(first.reply_stream, 1)
        server.restart()
        second = client.submit("蓝色 T恤", n_images=2, job_id="redis")
        results = client.wait_results(second.reply_stream, 2, timeout=90)
        assert [r.status for r in results] == ["ok", "ok"]
        assert worker.alive()
    finally:
        client.close()
        leftovers = worker.stop()
        server.stop()
    assert leftovers == []
