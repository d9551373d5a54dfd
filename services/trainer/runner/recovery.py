"""Finds jobs left ``running`` by a runner that died and resumes or fails them.

A runner on the same machine is known dead at once (its pid is gone); a runner elsewhere is
taken as dead when its heartbeat is older than ``stale_after_s``. Leftover processes of such a
job on this machine are stopped before the job is run again, so two runs never share outputs.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

import psutil

from shared.jobs import JobRecord, JobStore
from services.trainer.runner import active
from services.trainer.runner.process import kill_job_processes
from services.trainer.runner.settings import RunnerSettings
from services.trainer.runner.execute import requeue_or_fail

log = logging.getLogger(__name__)


def runner_alive(record: JobRecord, settings: RunnerSettings, now: float) -> bool:
    if record.runner_host == settings.host:
        if record.runner_pid == os.getpid():
            # This very process: alive only while it still executes the job.
            return active.running_here(record.id)
        return record.runner_pid > 0 and psutil.pid_exists(record.runner_pid) and \
            _is_runner(record.runner_pid)
    return record.heartbeat_at is not None and now - record.heartbeat_at < settings.stale_after_s


def _is_runner(pid: int) -> bool:
    """A reused pid must not pass for the dead runner."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "celery" in cmdline or "services.trainer.runner" in cmdline


def recover_orphans(store: JobStore, settings: RunnerSettings,
                    resubmit: Callable[[str], None]) -> list[tuple[str, str]]:
    """Returns (job id, new state) for every orphaned job handled."""
    handled = []
    now = time.time()
    for record in store.in_state("running"):
        if runner_alive(record, settings, now):
            continue
        if record.runner_host == settings.host:
            stopped = kill_job_processes(record.id)
            if stopped:
                log.warning("stopped %d leftover processes of job %s", stopped, record.id)
        who = f"{record.runner_host}:{record.runner_pid}" if record.runner_host else "unknown runner"
        state = requeue_or_fail(store, settings, record, f"runner {who} died mid-job")
        if state == "queued":
            resubmit(record.id)
        log.warning("job %s orphaned by %s -> %s", record.id, who, state)
        handled.append((record.id, state))
    return handled
