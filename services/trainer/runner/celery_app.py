"""The job runner's Celery app: task ``trainer.run_job`` on queue ``gpu``.

Start one worker per machine with one job at a time:
``celery -A services.trainer.runner.celery_app worker -Q gpu --pool solo --concurrency 1``.

The task message is acknowledged when the job starts (not when it ends): a job runs for hours,
far beyond any broker visibility timeout, and a redelivery would start a second copy. What
happens to a job whose runner dies is decided from the job record instead (recovery.py).
"""
from __future__ import annotations

import logging
import threading

import redis as redis_lib
from celery import Celery, signals

from shared import redis_keys
from shared.jobs import JobStore
from shared.tasks import RUN_JOB_TASK, send_job
from services.trainer.runner.execute import JobExecution
from services.trainer.runner.recovery import recover_orphans
from services.trainer.runner.settings import RunnerSettings

log = logging.getLogger(__name__)
settings = RunnerSettings()

app = Celery("cnclip-trainer", broker=settings.redis_url)
app.conf.update(
    task_default_queue=redis_keys.GPU_QUEUE,
    task_routes={RUN_JOB_TASK: {"queue": redis_keys.GPU_QUEUE}},
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_stopping = threading.Event()
_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore(redis_lib.Redis.from_url(settings.redis_url))
    return _store


def resubmit(job_id: str) -> None:
    """Queues a job handed back to the queue again, with a task for each of its nodes (the
    other nodes' runners left it when node 0's did)."""
    send_job(app, job_id, store().get(job_id).spec.nnodes)


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str, node_rank: int = 0) -> str:
    state = JobExecution(store(), settings, job_id, _stopping, node_rank=node_rank).run()
    if state == "queued" and node_rank == 0:
        # Handed back (worker shutting down): other runners pick it up. Only node 0 hands a
        # job back; another node that finds it queued has merely lost its peers.
        resubmit(job_id)
    log.info("job %s finished as %s", job_id, state)
    return state


def _recover_once() -> None:
    try:
        for job_id, state in recover_orphans(store(), settings, resubmit):
            log.warning("recovered job %s -> %s", job_id, state)
    except redis_lib.RedisError as exc:
        log.warning("recovery skipped: %s", exc)


def _recovery_loop() -> None:
    while not _stopping.wait(settings.recovery_interval_s):
        _recover_once()


@signals.worker_ready.connect
def _on_ready(**_kwargs) -> None:
    _recover_once()
    threading.Thread(target=_recovery_loop, name="job-recovery", daemon=True).start()


@signals.worker_shutting_down.connect
def _on_shutdown(**_kwargs) -> None:
    # The running job (if any) is stopped and handed back instead of blocking the shutdown.
    _stopping.set()
