"""The jobs this runner process is executing right now.

Recovery must not take a job for alive just because its record names this very process: the
record can outlive the execution (a task that ended with an error while Redis was away)."""
from __future__ import annotations

import threading

_lock = threading.Lock()
_jobs: set[str] = set()


def started(job_id: str) -> None:
    with _lock:
        _jobs.add(job_id)


def ended(job_id: str) -> None:
    with _lock:
        _jobs.discard(job_id)


def running_here(job_id: str) -> bool:
    with _lock:
        return job_id in _jobs
