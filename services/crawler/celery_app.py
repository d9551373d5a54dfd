"""The crawler's Celery application (``celery -A services.crawler.celery_app:app worker``).

Run it with the prefork pool and concurrency 1 (one Chromium per worker process; scale with
more workers): the pool's parent outlives a crashed or killed task process, notices the loss
and, with ``task_reject_on_worker_lost``, puts the task back at once, and it enforces the hard
time limit by killing the task process. The solo pool can do neither.

No lost work: tasks are acknowledged after they finish (``acks_late``), a worker reserves one
task at a time, and tasks a dead worker had reserved return to the queue once they are older
than ``visibility_timeout`` (checked by every live worker each ``unacked_restore_interval``
seconds, on every check since ``unacked_restore_throttle`` is 1).
"""
from __future__ import annotations

from celery import Celery

from services.crawler.settings import get_settings
from shared.redis_keys import CRAWL_QUEUE
from shared.tasks import CRAWL_TASK

settings = get_settings()

app = Celery("cnclip-crawler", broker=settings.redis_url, include=["services.crawler.tasks"])
app.conf.update(
    task_default_queue=CRAWL_QUEUE,
    task_routes={CRAWL_TASK: {"queue": CRAWL_QUEUE}},
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    worker_pool="prefork",
    task_ignore_result=True,
    task_time_limit=settings.task_time_limit_s,
    task_soft_time_limit=settings.soft_time_limit_s,
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": settings.unacked_restore_throttle,
    },
    broker_connection_retry_on_startup=True,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # The pool process starts its browser in a thread, but imports Selenium first.
    worker_proc_alive_timeout=60,
    worker_send_task_events=False,
    task_serializer="json",
    accept_content=["json"],
)
