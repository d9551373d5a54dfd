"""Riding out a Redis outage while a job runs.

A Redis restart (a few seconds to minutes) must not cost a training run: the runner keeps the
child running, keeps what it has to report, and tries again with growing pauses. Only when
Redis stays away for longer than the allowed outage does the caller give up.
"""
from __future__ import annotations

import logging
import time

import redis as redis_lib

log = logging.getLogger(__name__)

# What a restarting or unreachable Redis raises (a refused command is another matter).
REDIS_DOWN = (redis_lib.ConnectionError, redis_lib.TimeoutError, redis_lib.BusyLoadingError)


class RedisOutage:
    def __init__(self, max_outage_s: float, first_pause_s: float = 0.2, max_pause_s: float = 5.0):
        self.max_outage_s = max_outage_s
        self.first_pause_s = first_pause_s
        self.max_pause_s = max_pause_s
        self.since: float | None = None
        self._pause = first_pause_s

    def failed(self, exc: BaseException) -> float:
        """Records a failed call; returns how long to pause before the next try. Raises the
        error again once the outage has lasted longer than allowed."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self._pause = self.first_pause_s
            log.warning("Redis unreachable (%s); the job keeps running, retrying", exc)
        elif now - self.since > self.max_outage_s:
            raise exc
        pause = self._pause
        self._pause = min(self._pause * 2, self.max_pause_s)
        return pause

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("Redis reachable again after %.1fs", time.monotonic() - self.since)
        self.since = None
        self._pause = self.first_pause_s

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, retried through an outage of up to ``max_outage_s``."""
        while True:
            try:
                result = fn(*args, **kwargs)
            except REDIS_DOWN as exc:
                time.sleep(self.failed(exc))
                continue
            self.recovered()
            return result
