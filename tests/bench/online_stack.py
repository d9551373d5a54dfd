"""Crawler workers for the online benchmarks: started headless on the shop and logged in."""
from __future__ import annotations

from pathlib import Path

from tests.fixtures_crawler import CrawlClient, CrawlerWorker, log_in

LOGIN_ATTEMPTS = 3  # a loaded machine's Chromium now and then fails the login page; a new browser passes


def start_workers(redis_url: str, shop, workdir: Path, started: list[CrawlerWorker], ranks=(0, 1)) -> None:
    """Appends each started worker to ``started`` (the caller stops them, also on failure)."""
    client = CrawlClient(redis_url)
    try:
        for rank in ranks:
            for attempt in range(1, LOGIN_ATTEMPTS + 1):
                worker = CrawlerWorker(redis_url, shop.base_url, workdir / f"w{rank}-{attempt}", rank=rank,
                                       mode="headless", env={"CNCLIP_CRAWLER_MIN_INTERVAL_S": "0",
                                                             "CNCLIP_CRAWLER_JITTER_S": "0"})
                started.append(worker.start())
                try:
                    log_in(client, shop, rank)
                    break
                except TimeoutError:
                    leftovers = worker.stop()
                    started.remove(worker)
                    if leftovers or attempt == LOGIN_ATTEMPTS:
                        raise
    finally:
        client.close()
