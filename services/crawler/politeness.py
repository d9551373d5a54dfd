"""Pacing of one browser session's page loads.

A minimum interval with random jitter between requests keeps a session's rhythm close to a
person's; after an interstitial ("verify you are human") the session backs off with a growing
pause before it tries again.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable


class Politeness:
    def __init__(
        self,
        min_interval_s: float,
        jitter_s: float,
        backoff_s: float,
        backoff_factor: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.min_interval_s = min_interval_s
        self.jitter_s = jitter_s
        self.backoff_s = backoff_s
        self.backoff_factor = backoff_factor
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._last: float | None = None
        self._strikes = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next request may start."""
        if self._last is None or (self.min_interval_s <= 0 and self.jitter_s <= 0):
            return 0.0
        gap = self.min_interval_s + (self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0)
        return max(0.0, self._last + gap - self._clock())

    def wait(self) -> float:
        """Block until the next request may start; returns the seconds waited."""
        delay = self.next_delay()
        if delay > 0:
            self._sleep(delay)
        self._last = self._clock()
        return delay

    def interstitial_backoff(self, limit_s: float | None = None) -> float | None:
        """Pause after the site showed an interstitial; each one in a row doubles the pause.
        None, without waiting, when the pause would be longer than ``limit_s`` (the time left
        before a request's deadline)."""
        pause = self.backoff_s * (self.backoff_factor ** self._strikes)
        if limit_s is not None and pause > limit_s:
            return None
        self._strikes += 1
        if pause > 0:
            self._sleep(pause)
        self._last = self._clock()
        return pause

    def page_ok(self) -> None:
        """A normal page resets the backoff."""
        self._strikes = 0
