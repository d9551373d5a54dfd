"""Job records and their state machine, kept in Redis.

``queued -> running -> succeeded | failed | cancelled`` (plus ``queued -> cancelled|failed``
and ``running -> queued`` when a job is resumed after its runner died). Every transition is
one Lua script: it checks the current state, writes the new fields and appends a ``state``
event to the job's stream in a single atomic step, so two runners (or a runner and a cancel)
can never both move a job, and the stream always agrees with the record.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Annotated, Any, Iterable, Literal

import redis as redis_lib
from pydantic import BaseModel, Field, model_validator

from shared import redis_keys
from shared.jobspec import JobSpec, PredictSpec, TrainSpec
from shared.messages import JobEvent

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["train", "predict"]
STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
EVENTS_MAXLEN = 100_000  # bounds a runaway job's stream; far above a real run's event count
# One event may carry at most this much JSON (a longer one keeps its type and a cut preview);
# a job's stream at most STREAM_MAX_BYTES of event data (its oldest events go first).
EVENT_MAX_BYTES = 64 * 1024
STREAM_MAX_BYTES = 32 * 1024 * 1024
# A finished job's events are kept this long (its record stays until deleted).
FINISHED_EVENTS_TTL_S = 30 * 24 * 3600
LOG_TAIL_LINES = 40


class JobRecord(BaseModel):
    """The stored record (one Redis hash): everything the runners need, including what only
    they should see (process ids, addresses, log lines). The API answers with the public
    models of ``services/control/schemas.py``."""

    id: str
    kind: JobKind
    spec: Annotated[JobSpec, Field(discriminator="kind")]
    state: JobState = "queued"
    reason: str = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None
    fingerprint: str = ""
    attempts: int = 0
    # Who runs it (host, pid and process group of the torchrun launcher) and when it last said so.
    runner_host: str = ""
    runner_pid: int = 0
    runner_pgid: int = 0
    heartbeat_at: float | None = None
    master_addr: str = ""  # node 0's address, for the other nodes of a multi-node job
    resume_from: str = ""
    cancel_requested: bool = False
    log_tail: list[str] = []
    # Latest figures, kept on the record so a status page needs one read per job.
    progress: dict[str, Any] = {}
    result: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _spec_kind(cls, data: Any) -> Any:
        # Records written before the spec carried its kind: the record's kind says it.
        if isinstance(data, dict) and isinstance(data.get("spec"), dict) and "kind" not in data["spec"]:
            data = {**data, "spec": {**data["spec"], "kind": data.get("kind")}}
        return data

    @model_validator(mode="after")
    def _kinds_agree(self) -> "JobRecord":
        if self.spec.kind != self.kind:
            raise ValueError(f"a {self.kind} job cannot hold a {self.spec.kind} spec")
        return self

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_hash(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in self.model_dump(mode="json").items()}

    @classmethod
    def from_hash(cls, data: dict[Any, Any]) -> "JobRecord":
        decoded = {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
                   for k, v in data.items()}
        return cls.model_validate(decoded)


class JobNotFound(KeyError):
    pass


class InvalidTransition(RuntimeError):
    def __init__(self, job_id: str, current: str, wanted: str):
        super().__init__(f"job {job_id} is {current}; it cannot become {wanted}")
        self.current = current
        self.wanted = wanted


class RunNameTaken(RuntimeError):
    def __init__(self, name: str, job_id: str):
        super().__init__(f"a run named {name!r} is already held by job {job_id}; choose another "
                         "name or set continue_run to continue it")
        self.name = name
        self.job_id = job_id


class IdempotencyConflict(RuntimeError):
    def __init__(self, key: str, job_id: str):
        super().__init__(f"idempotency key {key!r} was used for job {job_id} with a different spec")
        self.job_id = job_id


def new_job_id() -> str:
    # Time first so ids sort by creation; random tail so two submissions never collide.
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


# KEYS: job hash, jobs index, events stream, idempotency key (or "" when none),
#       run name reservation (or "" when the job starts no new named run)
# ARGV: job id, created_at, fingerprint, events maxlen, state event json, field/value pairs...
# Returns the job id, the earlier job's id (same idempotency key), or "!run:<holder>" when
# another job holds the run name: the check and the reservation are one step, so two
# submissions of one new name cannot both pass.
_CREATE = """
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return existing end
end
if KEYS[5] ~= '' then
  local holder = redis.call('GET', KEYS[5])
  if holder then return '!run:' .. holder end
  redis.call('SET', KEYS[5], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[5])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[1]) end
return ARGV[1]
"""

# KEYS: job hash, events stream
# ARGV: allowed current states (json list), new state, events maxlen, state event json
#       (or ''), field/value pairs...

# Returns {1, state} on success, {0, current state} when the job is in another state,
# {-1, ''} when the job does not exist.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
current = cjson.decode(current)
local allowed = cjson.decode(ARGV[1])
local ok = false
for _, s in ipairs(allowed) do if s == current then ok = true end end
if not ok then return {0, current} end
if #ARGV >= 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[4])
end
return {1, ARGV[2]}
"""

# KEYS: events stream, events bytes counter
# ARGV: max stream bytes, event json...
# Appends the events and counts their bytes; while the stream holds more than the bound, its
# oldest entries are removed (and uncounted). Returns the id of the last entry added.
_APPEND = """
local last = ''
local added = 0
for i = 2, #ARGV do
  last = redis.call('XADD', KEYS[1], '*', 'event', ARGV[i])
  added = added + #ARGV[i]
end
local total = redis.call('INCRBY', KEYS[2], added)
local limit = tonumber(ARGV[1])
while total > limit do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 64)
  if #oldest == 0 then
    redis.call('SET', KEYS[2], 0)
    break
  end
  for _, entry in ipairs(oldest) do
    if total <= limit then break end
    local size = 0
    for j = 2, #entry[2], 2 do size = size + #entry[2][j] end
    redis.call('XDEL', KEYS[1], entry[1])
    total = redis.call('DECRBY', KEYS[2], size)
  end
end
return last
"""

# KEYS: job hash, events stream, events bytes counter, cancel flag, jobs index
# ARGV: job id
# Deletes a finished job's record and events. Returns {1, state}, {0, state} when the job has
# not finished, {-1, ''} when there is no such job.
_DELETE = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
current = cjson.decode(current)
if current ~= 'succeeded' and current ~= 'failed' and current ~= 'cancelled' then
  return {0, current}
end
local key = redis.call('HGET', KEYS[1], 'idempotency_key')
local spec = redis.call('HGET', KEYS[1], 'spec')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
return {1, current, key or 'null', spec or 'null'}
"""


_DELETE_IF_MINE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                   "return redis.call('DEL', KEYS[1]) end return 0")


def reserved_run_name(spec: JobSpec) -> str | None:
    """The run name a job must hold alone: a training job's new named run (one continuing a
    run shares it on purpose; an unnamed run is named after its unique job id)."""
    if isinstance(spec, TrainSpec) and spec.name and not spec.continue_run:
        return spec.name
    return None


def cap_event(event: JobEvent) -> str:
    """The event as JSON, cut to EVENT_MAX_BYTES: an oversized one keeps its type, timestamp
    and job id, with a preview of its data and its original size."""
    raw = event.model_dump_json()
    if len(raw.encode()) <= EVENT_MAX_BYTES:
        return raw
    preview = json.dumps(event.data, ensure_ascii=False, default=str)[:EVENT_MAX_BYTES // 4]
    return event.model_copy(update={"data": {
        "truncated": True, "bytes": len(raw.encode()), "preview": preview,
        **({"level": event.data["level"]} if isinstance(event.data.get("level"), str) else {})}}).model_dump_json()


class JobStore:
    """Create, read, list and transition jobs. Works on a synchronous redis-py client."""

    def __init__(self, client: redis_lib.Redis, stream_max_bytes: int = STREAM_MAX_BYTES):
        self.client = client
        self.stream_max_bytes = stream_max_bytes
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._append = client.register_script(_APPEND)
        self._delete = client.register_script(_DELETE)

    # ---- create / read ------------------------------------------------------------------
    def create(self, spec: JobSpec, *, idempotency_key: str | None = None,
               job_id: str | None = None) -> tuple[JobRecord, bool]:
        """Record a queued job. Returns (record, created); with an idempotency key already
        used for the same spec, returns the earlier job and ``created=False``."""
        key = idempotency_key or spec.idempotency_key
        record = JobRecord(id=job_id or new_job_id(), kind=spec.kind, spec=spec,
                           idempotency_key=key, fingerprint=spec.fingerprint())
        event = JobEvent(type="state", job_id=record.id, data={"state": "queued", "reason": ""})
        fields = [x for pair in record.to_hash().items() for x in pair]
        run = reserved_run_name(spec)
        got = self._create(
            keys=[redis_keys.job(record.id), redis_keys.jobs_index(),
                  redis_keys.job_events(record.id), redis_keys.idempotency(key) if key else "",
                  redis_keys.run_name(run) if run else ""],
            args=[record.id, record.created_at, record.fingerprint, EVENTS_MAXLEN,
                  event.model_dump_json(), *fields])
        got_id = got.decode() if isinstance(got, bytes) else str(got)
        if got_id.startswith("!run:"):
            raise RunNameTaken(run or "", got_id[len("!run:"):])
        if got_id == record.id:
            return record, True
        existing = self.get(got_id)
        if existing.fingerprint != record.fingerprint:
            raise IdempotencyConflict(key or "", got_id)
        return existing, False

    def get(self, job_id: str) -> JobRecord:
        data = self.client.hgetall(redis_keys.job(job_id))
        if not data:
            raise JobNotFound(job_id)
        return JobRecord.from_hash(data)

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(redis_keys.job(job_id)))

    def ids(self, limit: int = 100, offset: int = 0) -> list[str]:
        """Newest first."""
        raw = self.client.zrevrange(redis_keys.jobs_index(), offset, offset + limit - 1)
        return [r.decode() if isinstance(r, bytes) else r for r in raw]

    def list(self, limit: int = 100, offset: int = 0, state: str | None = None) -> list[JobRecord]:
        records = self.many(self.ids(limit=limit if state is None else 10_000, offset=offset))
        if state is not None:
            records = [r for r in records if r.state == state][:limit]
        return records

    def many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        job_ids = list(job_ids)
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(redis_keys.job(job_id))
        return [JobRecord.from_hash(d) for d in pipe.execute() if d]

    def in_state(self, *states: str) -> list[JobRecord]:
        return [r for r in self.many(self.ids(limit=100_000)) if r.state in states]

    def counts(self) -> dict[str, int]:
        ids = self.ids(limit=100_000)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(redis_keys.job(job_id), "state")
        counts = {s: 0 for s in STATES}
        for raw in pipe.execute():
            if raw:
                counts[json.loads(raw)] = counts.get(json.loads(raw), 0) + 1
        return counts

    # ---- change -------------------------------------------------------------------------
    def transition(self, job_id: str, new_state: JobState, *, reason: str = "",
                   allowed_from: Iterable[str] | None = None, **fields: Any) -> JobRecord:
        """Move the job to ``new_state`` if it is in one of ``allowed_from`` (default: every
        state the machine allows into ``new_state``). Raises InvalidTransition otherwise."""
        if allowed_from is None:
            allowed_from = [s for s, nxt in TRANSITIONS.items() if new_state in nxt]
        allowed = [s for s in allowed_from if new_state in TRANSITIONS[s]]
        now = time.time()
        updates: dict[str, Any] = {"state": new_state, "reason": reason, "updated_at": now, **fields}
        if new_state == "running":
            updates.setdefault("started_at", now)
        if new_state in TERMINAL:
            updates.setdefault("finished_at", now)
        event = JobEvent(type="state", job_id=job_id, data={"state": new_state, "reason": reason})
        flat = [x for k, v in updates.items() for x in (k, json.dumps(v))]
        status, value = self._transition(
            keys=[redis_keys.job(job_id), redis_keys.job_events(job_id)],
            args=[json.dumps(allowed), new_state, EVENTS_MAXLEN, event.model_dump_json(), *flat])
        value = value.decode() if isinstance(value, bytes) else value
        if status == -1:
            raise JobNotFound(job_id)
        if status == 0:
            raise InvalidTransition(job_id, value, new_state)
        if new_state in TERMINAL:
            # Old jobs' streams do not pile up in Redis; the record keeps the summary.
            pipe = self.client.pipeline(transaction=False)
            pipe.expire(redis_keys.job_events(job_id), FINISHED_EVENTS_TTL_S)
            pipe.expire(redis_keys.job_events_bytes(job_id), FINISHED_EVENTS_TTL_S)
            pipe.execute()
        return self.get(job_id)

    def delete(self, job_id: str) -> str:
        """Removes a finished job's record, events and idempotency key. Returns the state it
        had; raises JobNotFound, or InvalidTransition when it has not finished (cancel first)."""
        result = self._delete(
            keys=[redis_keys.job(job_id), redis_keys.job_events(job_id),
                  redis_keys.job_events_bytes(job_id), redis_keys.job_cancel(job_id),
                  redis_keys.jobs_index()], args=[job_id])
        status, value = result[0], result[1]
        value = value.decode() if isinstance(value, bytes) else value
        if status == -1:
            raise JobNotFound(job_id)
        if status == 0:
            raise InvalidTransition(job_id, value, "deleted")
        key = json.loads(result[2])
        if key:
            # The key may since name another job: only our own mapping goes.
            self.client.eval(_DELETE_IF_MINE, 1, redis_keys.idempotency(key), job_id)
        spec = json.loads(result[3]) if len(result) > 3 else None
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str) and name:
            # The run's folder (if it was made) still refuses the name on disk; a run that never
            # wrote anything gives its name back with its record.
            self.client.eval(_DELETE_IF_MINE, 1, redis_keys.run_name(name), job_id)
        return value

    def update(self, job_id: str, *, only_in: Iterable[str] = ("running",), **fields: Any) -> bool:
        """Write fields of a job that is still in one of ``only_in`` (no state change, no
        event). Returns False when the job has moved on meanwhile."""
        status, _ = self._transition(
            keys=[redis_keys.job(job_id), redis_keys.job_events(job_id)],
            args=[json.dumps(list(only_in)), "", EVENTS_MAXLEN, "",
                  *[x for k, v in fields.items() for x in (k, json.dumps(v))]])
        return status == 1

    def request_cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled at once; a running one is flagged for its runner, which
        stops the process group and records the cancellation."""
        try:
            return self.transition(job_id, "cancelled", reason="cancelled before it started",
                                   allowed_from=["queued"])
        except InvalidTransition as exc:
            if exc.current != "running":
                raise
        self.client.set(redis_keys.job_cancel(job_id), "1", ex=7 * 24 * 3600)
        self.update(job_id, cancel_requested=True)
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.exists(redis_keys.job_cancel(job_id)))

    # ---- events -------------------------------------------------------------------------
    def append_event(self, job_id: str, event: JobEvent) -> str:
        return self.append_events(job_id, [event])

    def append_events(self, job_id: str, events: list[JobEvent]) -> str:
        """Appends in one step, each event cut to EVENT_MAX_BYTES and the stream kept under
        STREAM_MAX_BYTES. Returns the last entry's id ('' for no events)."""
        if not events:
            return ""
        payloads = [cap_event(e if e.job_id is not None else e.model_copy(update={"job_id": job_id}))
                    for e in events]
        entry = self._append(keys=[redis_keys.job_events(job_id), redis_keys.job_events_bytes(job_id)],
                             args=[self.stream_max_bytes, *payloads])
        return entry.decode() if isinstance(entry, bytes) else entry

    def events(self, job_id: str, after: str = "-", count: int | None = None) -> list[tuple[str, JobEvent]]:
        start = after if after == "-" else f"({after}"
        raw = self.client.xrange(redis_keys.job_events(job_id), min=start, count=count)
        return [(i.decode() if isinstance(i, bytes) else i, parse_event_fields(f)) for i, f in raw]


def parse_event_fields(fields: dict[Any, Any]) -> JobEvent:
    raw = fields.get(b"event", fields.get("event"))
    return JobEvent.model_validate_json(raw)


__all__ = ["JobRecord", "JobStore", "JobState", "STATES", "TERMINAL", "TRANSITIONS",
           "JobNotFound", "InvalidTransition", "IdempotencyConflict", "RunNameTaken", "new_job_id",
           "reserved_run_name",
           "TrainSpec", "PredictSpec", "parse_event_fields", "LOG_TAIL_LINES", "EVENT_MAX_BYTES",
           "STREAM_MAX_BYTES", "cap_event"]
