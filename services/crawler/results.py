"""Pushing a crawl's result to Redis exactly once, and the failure stream.

One Lua script marks the request done (SET NX), appends the result to the reply stream, logs
the failures and counts the rank's statistics. Redis runs a script atomically and persists its
effects together, so a crash can neither leave a result without its mark (a duplicate on
redelivery) nor a mark without its result (a lost result); a duplicate delivery finds the mark
and adds nothing.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared import redis_keys
from shared.messages import CrawlResult

_PUBLISH_ONCE = """
-- KEYS: done mark, reply stream, failure stream, rank stats
-- ARGV: ttl, failures maxlen, mark value, n result field pairs, n failures, pages, images,
--       then the result's fields and values, then each failure's meta JSON
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', tonumber(ARGV[1])) then
  return 0
end
local n_fields = tonumber(ARGV[4])
local n_failures = tonumber(ARGV[5])
local fields = {}
for i = 1, 2 * n_fields do fields[i] = ARGV[7 + i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
for i = 1, n_failures do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', tonumber(ARGV[2]), '*', 'meta', ARGV[7 + 2 * n_fields + i])
end
redis.call('HINCRBY', KEYS[4], 'queries', 1)
redis.call('HINCRBY', KEYS[4], 'images', tonumber(ARGV[7]))
redis.call('HINCRBY', KEYS[4], 'failures', n_failures)
redis.call('HINCRBY', KEYS[4], 'pages', tonumber(ARGV[6]))
redis.call('HINCRBY', KEYS[4], 'status_' .. cjson.decode(ARGV[3])['status'], 1)
return 1
"""


def failure_meta(result: CrawlResult, url: str | None, reason: str) -> str:
    return json.dumps({
        "job_id": result.job_id, "request_id": result.request_id, "split": result.split,
        "query": result.query, "url": url, "reason": reason, "rank": result.rank,
        "ts": time.time(),
    }, ensure_ascii=False)


class ResultPublisher:
    def __init__(self, client: redis.Redis, rank: int, done_ttl_s: int, failures_maxlen: int):
        self.client = client
        self.rank = rank
        self.done_ttl_s = done_ttl_s
        self.failures_maxlen = failures_maxlen
        self._script = client.register_script(_PUBLISH_ONCE)

    def already_done(self, request_id: str) -> bool:
        return bool(self.client.exists(redis_keys.crawl_done(request_id)))

    def publish(self, result: CrawlResult, reply_stream: str, pages: int = 0,
                extra_failures: list[tuple[str | None, str]] = ()) -> bool:
        """Pushes the result unless one was pushed already; True when this call pushed it.
        Every missing image (and any ``extra_failures``) also goes to the failure stream."""
        fields = result.to_stream_fields()
        failures = [failure_meta(result, m.url, m.reason) for m in result.missing]
        failures += [failure_meta(result, url, reason) for url, reason in extra_failures]
        mark = json.dumps({"rank": self.rank, "ts": time.time(), "status": result.status})
        args: list[Any] = [self.done_ttl_s, self.failures_maxlen, mark, len(fields),
                           len(failures), pages, len(result.images)]
        for key, value in fields.items():
            args += [key, value]
        args += failures
        keys = [redis_keys.crawl_done(result.request_id), reply_stream,
                redis_keys.crawl_failures(), redis_keys.crawler_stats(self.rank)]
        # Safe to repeat: if a first attempt went through but its answer was lost, the next
        # one finds the mark and pushes nothing.
        for attempt in Retrying(
            retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
            stop=stop_after_attempt(6), wait=wait_exponential(multiplier=0.5, max=10),
            reraise=True,
        ):
            with attempt:
                return bool(self._script(keys=keys, args=args))
        raise AssertionError("unreachable")

    def record_failure(self, meta: dict[str, Any]) -> None:
        """A failure that belongs to no result (e.g. a request too malformed to answer)."""
        meta = {"ts": time.time(), "rank": self.rank, **meta}
        self.client.xadd(redis_keys.crawl_failures(), {"meta": json.dumps(meta, ensure_ascii=False)},
                         maxlen=self.failures_maxlen, approximate=True)


# ---- the failure log ----------------------------------------------------------------------
def iter_failures(client: redis.Redis, job_id: str | None = None,
                  batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Failure records, oldest first (optionally of one job)."""
    start = "-"
    while True:
        entries = client.xrange(redis_keys.crawl_failures(), min=start, max="+", count=batch)
        for entry_id, fields in entries:
            meta = json.loads(fields[b"meta"])
            if job_id is None or meta.get("job_id") == job_id:
                yield meta
        if len(entries) < batch:
            return
        last = entries[-1][0].decode()
        millis, seq = last.split("-")
        start = f"{millis}-{int(seq) + 1}"


def _clean(value: Any) -> str:
    """One line, one field: tabs and newlines in queries or reasons must not break the file."""
    return " ".join(str(value if value is not None else "").split())


def write_failures(client: redis.Redis, out: TextIO, job_id: str | None = None) -> int:
    """Writes the failure log as tab-separated text (time, job, split, query, url, reason),
    one line per failure; returns the number of lines."""
    count = 0
    out.write("time\tjob_id\tsplit\tquery\turl\treason\n")
    for meta in iter_failures(client, job_id):
        stamp = datetime.fromtimestamp(meta.get("ts", 0), tz=timezone.utc).isoformat(timespec="seconds")
        row = [stamp, meta.get("job_id"), meta.get("split"), meta.get("query"), meta.get("url"),
               meta.get("reason")]
        out.write("\t".join(_clean(v) for v in row) + "\n")
        count += 1
    return count


def export_failures(client: redis.Redis, path: Path, job_id: str | None = None) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        return write_failures(client, out, job_id)
