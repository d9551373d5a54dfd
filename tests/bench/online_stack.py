"""The online benchmarks' stack: real Redis, the shop, and crawler workers started headless on
it and logged in; the trainer's settings (environment) point at them."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.fixtures_crawler import CrawlClient, CrawlerWorker, log_in
from tests.fixtures_shop import ShopServer
from tests.helpers import RedisServer

LOGIN_ATTEMPTS = 3  # a loaded machine's Chromium now and then fails the login page; a new browser passes


@dataclass
class OnlineStack:
    redis_url: str
    shop: ShopServer | None
    # Processes of the workers still alive after they were stopped (filled on leaving the stack).
    leftovers: list = field(default_factory=list)


@contextlib.contextmanager
def online_stack(workdir: Path, ranks: tuple[int, ...] = (0, 1),
                 shop_env: dict[str, str] | None = None) -> Iterator[OnlineStack]:
    """``shop_env``: the shop's settings (e.g. CNCLIP_SHOP_WRONG_ITEM_RATE). A benchmark stopped
    with SIGTERM (``kill``) still stops the servers and workers it started: the signal becomes
    SystemExit, so the ``finally`` below runs."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers may be set
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        with _stack(workdir, ranks, shop_env) as stack:
            yield stack
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _stack(workdir: Path, ranks: tuple[int, ...], shop_env: dict[str, str] | None) -> Iterator[OnlineStack]:
    redis_server = RedisServer(workdir / "redis").start()
    os.environ["CNCLIP_REDIS_URL"] = redis_server.url  # read by the live source
    os.environ["CNCLIP_DATA_ROOT"] = str(workdir)
    workers: list[CrawlerWorker] = []
    stack = OnlineStack(redis_server.url, shop=None)
    try:
        stack.shop = ShopServer(env=shop_env).start()
        start_workers(redis_server.url, stack.shop, workdir, workers, ranks)
        yield stack
    finally:
        stack.leftovers += [process for worker in workers for process in worker.stop()]
        if stack.shop is not None:
            stack.shop.stop()
        redis_server.stop()


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
