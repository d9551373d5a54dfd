"""The crawl task and the per-process set-up of the crawler runtime."""
from __future__ import annotations

import logging
import os
import threading
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from services.crawler.celery_app import app, settings
from services.crawler.runtime import CrawlerRuntime
from shared.tasks import CRAWL_TASK

log = logging.getLogger(__name__)

_runtime: CrawlerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> CrawlerRuntime:
    """The process's runtime (created by the pool process at start; lazily in a solo pool)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = CrawlerRuntime(settings)
            _runtime.start_keeper()
        return _runtime


def _exit_with_parent(parent: int) -> None:
    """A pool process whose worker died (even by SIGKILL) exits too; its browser's reaper
    then cleans up. Polling is used because PR_SET_PDEATHSIG is tied to the forking thread."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            log.error("worker process %d is gone; exiting", parent)
            os._exit(1)


@worker_process_init.connect
def _start_runtime(**_: object) -> None:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch",
                     daemon=True).start()
    get_runtime()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _stop_runtime(**_: object) -> None:
    global _runtime
    with _runtime_lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()


# Redis unreachable for longer than the publisher's own retries: run the task again later
# (a result already pushed is recognised and not pushed twice).
@app.task(name=CRAWL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
          ignore_result=True, autoretry_for=(redis.ConnectionError, redis.TimeoutError),
          retry_backoff=5, retry_backoff_max=120, max_retries=10)
def crawl(self, request: dict) -> dict:
    """Searches the site for ``request['query']`` and pushes one CrawlResult to
    ``request['reply_stream']`` (see shared.messages.CrawlRequest)."""
    runtime = get_runtime()
    try:
        return runtime.handle(request)
    except SoftTimeLimitExceeded:
        return runtime.fail(request, f"crawl took longer than {settings.soft_time_limit_s}s")
