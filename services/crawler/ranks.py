"""Which rank a crawler worker is: set by configuration, or claimed in Redis.

A claim is a key with a TTL holding the owner's identity (host and worker process), refreshed
while the worker lives. Claiming runs as one Lua script so two workers starting together
cannot take the same rank. An owner that claims again (a replaced pool process of the same
worker) gets its own rank back, so its saved cookies still match.
"""
from __future__ import annotations

import redis

from shared import redis_keys

_CLAIM = """
-- ARGV: owner, ttl, max ranks, key prefix, key suffix
local owner, ttl, max_ranks = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for rank = 0, max_ranks - 1 do
  local key = ARGV[4] .. rank .. ARGV[5]
  if redis.call('GET', key) == owner then
    redis.call('EXPIRE', key, ttl)
    return rank
  end
end
for rank = 0, max_ranks - 1 do
  local key = ARGV[4] .. rank .. ARGV[5]
  if redis.call('SET', key, owner, 'NX', 'EX', ttl) then
    return rank
  end
end
return -1
"""

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class NoFreeRank(RuntimeError):
    pass


def _key_parts() -> tuple[str, str]:
    marker = "\x00"
    prefix, suffix = redis_keys.crawler_rank_claim(marker).split(marker)  # type: ignore[arg-type]
    return prefix, suffix


def claim_rank(client: redis.Redis, owner: str, max_ranks: int, ttl_s: int) -> int:
    prefix, suffix = _key_parts()
    rank = int(client.eval(_CLAIM, 0, owner, ttl_s, max_ranks, prefix, suffix))
    if rank < 0:
        raise NoFreeRank(f"all {max_ranks} crawler ranks are taken (CNCLIP_CRAWLER_MAX_RANKS)")
    return rank


def refresh_claim(client: redis.Redis, rank: int, owner: str, ttl_s: int) -> bool:
    """Keeps the claim alive; False when another worker holds the rank now."""
    return bool(client.eval(_REFRESH, 1, redis_keys.crawler_rank_claim(rank), owner, ttl_s))


def release_rank(client: redis.Redis, rank: int, owner: str) -> None:
    client.eval(_RELEASE, 1, redis_keys.crawler_rank_claim(rank), owner)
