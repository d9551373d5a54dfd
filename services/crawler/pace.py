"""Caps on how many result pages one browser session loads per hour and per day, and a pause
between two searches.

A site counts what one account does over hours, not only the gap between two requests: past
its limit it shows a slider that no automation passes. The caps keep the session under it;
the pages are counted in a sliding window, in memory (a restarted worker starts afresh).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S


class PageBudget:
    def __init__(
        self,
        max_per_hour: int = 0,
        max_per_day: int = 0,
        search_cooldown_s: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = [(window, cap) for window, cap in ((HOUR_S, max_per_hour), (DAY_S, max_per_day))
                       if cap > 0]
        self.search_cooldown_s = search_cooldown_s
        self._clock = clock
        self._pages: deque[float] = deque()
        self._last_search: float | None = None

    def page_delay(self) -> float:
        """Seconds until one more page stays within every cap (0: now)."""
        now = self._clock()
        while self._pages and self._pages[0] <= now - DAY_S:
            self._pages.popleft()
        delay = 0.0
        for window, cap in self.limits:
            in_window = [t for t in self._pages if t > now - window]
            if len(in_window) >= cap:
                # The oldest page that must leave the window for one more to fit.
                delay = max(delay, in_window[len(in_window) - cap] + window - now)
        return delay

    def search_delay(self) -> float:
        """Seconds until the next search may start."""
        if self._last_search is None or self.search_cooldown_s <= 0:
            return 0.0
        return max(0.0, self._last_search + self.search_cooldown_s - self._clock())

    def record_page(self) -> None:
        self._pages.append(self._clock())

    def record_search(self) -> None:
        self._last_search = self._clock()

    def describe(self) -> str:
        return ", ".join(f"{cap} pages per {window / HOUR_S:g} h" for window, cap in self.limits)
