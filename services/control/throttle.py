"""Slows down token guessing at the sign-in form: each client address gets a few wrong tries
per window, then 429 until the window has passed. Kept in memory: one control process is the
only place tokens are checked against the form."""
from __future__ import annotations

import time
from collections import deque


class FailureThrottle:
    def __init__(self, max_failures: int, window_s: float, max_clients: int = 10_000):
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            if len(self._failures) >= self.max_clients:  # bounded memory under a spray of addresses
                self._failures.pop(next(iter(self._failures)))
            times = self._failures[client] = deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.max_failures:
            return 0.0
        return max(0.0, self.window_s - (now - times[0]))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        self._recent(client, now).append(now)
