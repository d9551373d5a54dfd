"""An account's budget of result pages, counted in Redis: per hour and per day, spread out
(a least gap between two pages), a pause between two searches, and cooldowns after the site
showed a challenge.

A site counts what an account does, not what one browser does: every rank logged in as the
same account shares one budget (the account is named by a login cookie), and a restarted
worker finds its count where it left it. A page is reserved atomically (one Lua script), so
two ranks on one account cannot both take the last page of an hour. Callers never wait past
a request's deadline: they ask how long until the next page and give up when it is too long.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import redis

from shared import redis_keys

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S

# KEYS: pages (sorted set), cooldown (string "until|reason")
# ARGV: now, per hour, per day, least gap, member
# Returns {0, ""} when the page was recorded, else {seconds to wait, why}.
_RESERVE = """
local now = tonumber(ARGV[1])
local per_hour, per_day, gap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cooldown = redis.call('GET', KEYS[2])
if cooldown then
  local sep = string.find(cooldown, '|', 1, true)
  local untill = tonumber(string.sub(cooldown, 1, sep - 1))
  if untill > now then return {tostring(untill - now), string.sub(cooldown, sep + 1)} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400)
local wait, why = 0, ''
if gap > 0 then
  local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if last[2] and tonumber(last[2]) + gap > now then
    wait, why = tonumber(last[2]) + gap - now, 'the least gap between two pages'
  end
end
local limits = {{3600, per_hour, ' pages per 1 h'}, {86400, per_day, ' pages per 24 h'}}
for _, limit in ipairs(limits) do
  local window, cap = limit[1], limit[2]
  if cap > 0 then
    local inside = redis.call('ZRANGEBYSCORE', KEYS[1], now - window, '+inf', 'WITHSCORES')
    local count = #inside / 2
    if count >= cap then
      local oldest = tonumber(inside[(count - cap) * 2 + 2])
      if oldest + window - now > wait then wait, why = oldest + window - now, cap .. limit[3] end
    end
  end
end
if wait > 0 then return {tostring(wait), why} end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('EXPIRE', KEYS[1], 90000)
return {'0', ''}
"""


class AccountBudget:
    def __init__(
        self,
        client: redis.Redis,
        account: Callable[[], str],
        max_per_hour: int = 0,
        max_per_day: int = 0,
        min_gap_s: float = 0.0,
        search_cooldown_s: float = 0.0,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        # The account's name at the time of asking (a login may happen in between).
        self.account = account
        self.max_per_hour = max_per_hour
        self.max_per_day = max_per_day
        self.min_gap_s = min_gap_s
        self.search_cooldown_s = search_cooldown_s
        self._clock = clock
        self._reserve = client.register_script(_RESERVE)
        self._last_search: float | None = None
        self.last_reason = ""

    def reserve_page(self) -> float:
        """Records one page and returns 0 when the account may load it now; else the seconds
        until it may (``last_reason`` says why), recording nothing."""
        name = self.account()
        wait, why = self._reserve(
            keys=[redis_keys.crawler_account_pages(name), redis_keys.crawler_account_cooldown(name)],
            args=[self._clock(), self.max_per_hour, self.max_per_day, self.min_gap_s,
                  f"{self._clock():.6f}:{secrets.token_hex(4)}"])
        self.last_reason = why.decode() if isinstance(why, bytes) else str(why)
        return float(wait)

    def pages_in(self, window_s: float) -> int:
        now = self._clock()
        return int(self.client.zcount(redis_keys.crawler_account_pages(self.account()),
                                      now - window_s, "+inf"))

    def cool_down(self, seconds: float, reason: str) -> None:
        """No page of this account for ``seconds`` (a longer cooldown already set stays)."""
        if seconds <= 0:
            return
        key = redis_keys.crawler_account_cooldown(self.account())
        until = self._clock() + seconds
        current = self.client.get(key)
        if current is not None:
            try:
                if float(current.decode().split("|", 1)[0]) >= until:
                    return
            except ValueError:
                pass
        self.client.set(key, f"{until:.3f}|cooldown after {reason}", ex=int(seconds) + 1)

    def search_delay(self) -> float:
        """Seconds until this rank's next search may start (a pause after the last one)."""
        if self._last_search is None or self.search_cooldown_s <= 0:
            return 0.0
        return max(0.0, self._last_search + self.search_cooldown_s - self._clock())

    def record_search(self) -> None:
        self._last_search = self._clock()

    def describe(self) -> str:
        caps = [(self.max_per_hour, "1 h"), (self.max_per_day, "24 h")]
        return ", ".join(f"{cap} pages per {window}" for cap, window in caps if cap > 0)


def account_name(cookies: list[dict], cookie_names: list[str], fallback: str) -> str:
    """The logged-in account, from the first of the profile's account cookies that is set
    (safe as a key part); ``fallback`` (the rank's own name) while nobody is logged in."""
    by_name = {c.get("name"): c.get("value") for c in cookies}
    for name in cookie_names:
        value = by_name.get(name)
        if value:
            return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(value))[:64]
    return fallback
