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
import threading
from dataclasses import dataclass
import time
from typing import Annotated, Any, Iterable, Literal, get_args

import redis as redis_lib
from pydantic import BaseModel, Field, ValidationError, model_validator

from shared import redis_keys
from shared.jobspec import IndexSpec, JobSpec, PredictSpec, TrainSpec
from shared.messages import JobEvent

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["train", "predict", "index"]
STATES: tuple[JobState, ...] = get_args(JobState)
JOB_KINDS: tuple[JobKind, ...] = get_args(JobKind)  # each has its own index of jobs
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


class JobUnreadable(ValueError):
    """The stored record of a job cannot be read (not JSON, not a record, not a hash)."""

    def __init__(self, job_id: str, reason: str):
        super().__init__(f"the record of job {job_id} cannot be read: {reason}")
        self.job_id = job_id
        self.reason = reason


@dataclass(frozen=True)
class UnreadableJob:
    """Stands in a list for a record that cannot be read, so the rest can still be shown."""

    id: str
    reason: str
    state: str = "unreadable"


def read_record(job_id: str, data: dict[Any, Any]) -> "JobRecord":
    """The record of a hash, or JobUnreadable saying what is wrong with it."""
    try:
        return JobRecord.from_hash(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise JobUnreadable(job_id, problems) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JobUnreadable(job_id, f"a field is not JSON ({exc})") from None


class InvalidTransition(RuntimeError):
    def __init__(self, job_id: str, current: str, wanted: str):
        super().__init__(f"job {job_id} is {current}; it cannot become {wanted}")
        self.job_id = job_id
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
# ARGV: job id, created_at, fingerprint, events maxlen, state event json, kind/state index
#       prefix, field/value pairs...
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
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if redis.call('ZCARD', KEYS[2]) == 0 then
  -- The first job of a fresh Redis: no older job lacks the kind/state indexes.
  redis.call('SET', ARGV[6] .. 'version', '1')
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local kind = cjson.decode(redis.call('HGET', KEYS[1], 'kind'))
redis.call('ZADD', ARGV[6] .. kind .. ':*', ARGV[2], ARGV[1])
redis.call('ZADD', ARGV[6] .. '*:queued', ARGV[2], ARGV[1])
redis.call('ZADD', ARGV[6] .. kind .. ':queued', ARGV[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[5])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[1]) end
return ARGV[1]
"""

# KEYS: job hash, events stream
# ARGV: allowed current states (json list), new state (or '' to keep it), events maxlen,
#       state event json (or ''), kind/state index prefix, job id, field/value pairs...
# The job moves between the kind/state indexes in the same step.

# Returns {1, state} on success, {0, current state} when the job is in another state,
# {-1, ''} when the job does not exist.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
local readable, decoded = pcall(cjson.decode, current)
if not readable or type(decoded) ~= 'string' then return {0, 'unreadable'} end
current = decoded
local allowed = cjson.decode(ARGV[1])
local ok = false
for _, s in ipairs(allowed) do if s == current then ok = true end end
if not ok then return {0, current} end
if #ARGV >= 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
if ARGV[2] ~= '' and ARGV[2] ~= current then
  local kind = cjson.decode(redis.call('HGET', KEYS[1], 'kind'))
  local score = tonumber(redis.call('HGET', KEYS[1], 'created_at')) or 0
  for _, family in ipairs({'*', kind}) do
    redis.call('ZREM', ARGV[5] .. family .. ':' .. current, ARGV[6])
    redis.call('ZADD', ARGV[5] .. family .. ':' .. ARGV[2], score, ARGV[6])
  end
end
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

# KEYS: job hash, events stream, events bytes counter, cancel flag, jobs index, then every
#       kind/state index
# ARGV: job id, '1' to delete whatever the state (a record the caller found unreadable)
# Deletes a finished job's record and events. Returns {1, state}, {0, state} when the job has
# not finished, {-1, ''} when there is no such job. A record that cannot be read (no state, a
# state that is not JSON, not a hash at all) can be deleted too: nothing could run it.
_DELETE = """
local kind_of = redis.call('TYPE', KEYS[1])['ok']
if kind_of == 'none' then return {-1, ''} end
local current = 'unreadable'
local key, spec = nil, nil
if kind_of == 'hash' then
  local decoded, value = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'state') or '')
  if decoded and type(value) == 'string' then current = value end
  key = redis.call('HGET', KEYS[1], 'idempotency_key')
  spec = redis.call('HGET', KEYS[1], 'spec')
end
if ARGV[2] ~= '1' and current ~= 'succeeded' and current ~= 'failed' and current ~= 'cancelled'
    and current ~= 'unreadable' then
  return {0, current}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
for i = 5, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return {1, current, key or 'null', spec or 'null'}
"""


_DELETE_IF_MINE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                   "return redis.call('DEL', KEYS[1]) end return 0")


def _every_filtered_index() -> list[str]:
    return [redis_keys.jobs_index_by(kind, state) for kind in (None, *JOB_KINDS)
            for state in (None, *STATES) if kind or state]


def _json_or_none(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


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
        self._indexed = False  # whether ensure_indexes found (or made) the kind/state indexes
        self._indexing = threading.Lock()

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
                  event.model_dump_json(), redis_keys.jobs_index_by_prefix(), *fields])
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
        """Raises JobNotFound, or JobUnreadable when the stored record cannot be read."""
        try:
            data = self.client.hgetall(redis_keys.job(job_id))
        except redis_lib.ResponseError as exc:  # the key holds something else than a hash
            raise JobUnreadable(job_id, str(exc)) from exc
        if not data:
            raise JobNotFound(job_id)
        return read_record(job_id, data)

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(redis_keys.job(job_id)))

    def ids(self, limit: int = 100, offset: int = 0) -> list[str]:
        """Newest first."""
        raw = self.client.zrevrange(redis_keys.jobs_index(), offset, offset + limit - 1)
        return [r.decode() if isinstance(r, bytes) else r for r in raw]

    def filtered_ids(self, limit: int = 100, offset: int = 0, state: str | None = None,
                     kind: str | None = None) -> tuple[list[str], int]:
        """A page of ids (newest first) of the jobs of ``state`` and/or ``kind``, and how many
        there are in all: one index read, whatever the number of jobs."""
        key = redis_keys.jobs_index_by(kind, state) if (state or kind) else redis_keys.jobs_index()
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(key, offset, offset + limit - 1)
        pipe.zcard(key)
        raw, total = pipe.execute()
        return [r.decode() if isinstance(r, bytes) else r for r in raw], int(total)

    def list(self, limit: int = 100, offset: int = 0, state: str | None = None,
             kind: str | None = None) -> list[JobRecord]:
        return self.many(self.filtered_ids(limit, offset, state, kind)[0])

    def many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """The readable records of ``job_ids`` (gone and unreadable ones left out)."""
        return [r for r in self.many_or_unreadable(job_ids) if isinstance(r, JobRecord)]

    def many_or_unreadable(self, job_ids: Iterable[str]) -> list["JobRecord | UnreadableJob"]:
        """Each record of ``job_ids`` that exists, in order; one that cannot be read is
        reported as an UnreadableJob with the reason instead of failing the whole read."""
        job_ids = list(job_ids)
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(redis_keys.job(job_id))
        out: list[JobRecord | UnreadableJob] = []
        for job_id, data in zip(job_ids, pipe.execute(raise_on_error=False)):
            if isinstance(data, Exception):
                out.append(UnreadableJob(job_id, str(data)))
                continue
            if not data:
                continue
            try:
                out.append(read_record(job_id, data))
            except JobUnreadable as exc:
                out.append(UnreadableJob(job_id, exc.reason))
        return out

    def in_state(self, *states: str) -> list[JobRecord]:
        self.ensure_indexes()
        ids = [i for state in states for i in self.filtered_ids(1_000_000, 0, state)[0]]
        return [r for r in self.many(ids) if r.state in states]

    def counts(self) -> dict[str, int]:
        self.ensure_indexes()
        pipe = self.client.pipeline(transaction=False)
        for state in STATES:
            pipe.zcard(redis_keys.jobs_index_by(None, state))
        return dict(zip(STATES, (int(n) for n in pipe.execute())))

    def ensure_indexes(self) -> int:
        """Indexes by kind and state every job recorded before those indexes existed (once per
        Redis; later jobs are indexed by the scripts that write them). Returns how many."""
        if self._indexed:
            return 0
        with self._indexing:  # callers at once wait for one pass
            return self._index_older_jobs()

    def _index_older_jobs(self) -> int:
        if self._indexed or self.client.exists(redis_keys.jobs_index_version()):
            self._indexed = True
            return 0
        ids = self.ids(limit=10_000_000)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(redis_keys.job(job_id), ["kind", "state", "created_at"])
        indexed = 0
        write = self.client.pipeline(transaction=False)
        for job_id, values in zip(ids, pipe.execute(raise_on_error=False)):
            if isinstance(values, Exception):
                continue
            kind, state, created = (_json_or_none(v) for v in values)
            if kind not in JOB_KINDS or state not in STATES:
                continue
            score = float(created) if isinstance(created, (int, float)) else 0.0
            for key in (redis_keys.jobs_index_by(kind), redis_keys.jobs_index_by(None, state),
                        redis_keys.jobs_index_by(kind, state)):
                write.zadd(key, {job_id: score})
            indexed += 1
        write.set(redis_keys.jobs_index_version(), "1")
        write.execute()
        self._indexed = True
        return indexed

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
            args=[json.dumps(allowed), new_state, EVENTS_MAXLEN, event.model_dump_json(),
                  redis_keys.jobs_index_by_prefix(), job_id, *flat])
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

    def delete(self, job_id: str, *, unreadable: bool = False) -> str:
        """Removes a finished job's record, events and idempotency key. Returns the state it
        had; raises JobNotFound, or InvalidTransition when it has not finished (cancel first).
        ``unreadable``: the caller found the record unreadable; it goes whatever its state says
        (nothing can run a job whose record cannot be read)."""
        result = self._delete(
            keys=[redis_keys.job(job_id), redis_keys.job_events(job_id),
                  redis_keys.job_events_bytes(job_id), redis_keys.job_cancel(job_id),
                  redis_keys.jobs_index(), *_every_filtered_index()], args=[job_id, "1" if unreadable else "0"])
        status, value = result[0], result[1]
        value = value.decode() if isinstance(value, bytes) else value
        if status == -1:
            raise JobNotFound(job_id)
        if status == 0:
            raise InvalidTransition(job_id, value, "deleted")
        key = _json_or_none(result[2])
        if isinstance(key, str) and key:
            # The key may since name another job: only our own mapping goes.
            self.client.eval(_DELETE_IF_MINE, 1, redis_keys.idempotency(key), job_id)
        spec = _json_or_none(result[3])
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
            args=[json.dumps(list(only_in)), "", EVENTS_MAXLEN, "", redis_keys.jobs_index_by_prefix(), job_id,
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
           "JobNotFound", "JobUnreadable", "UnreadableJob", "read_record", "JOB_KINDS", "InvalidTransition",
           "IdempotencyConflict", "RunNameTaken", "new_job_id", "reserved_run_name",
           "TrainSpec", "PredictSpec", "IndexSpec", "parse_event_fields", "LOG_TAIL_LINES", "EVENT_MAX_BYTES",
           "STREAM_MAX_BYTES", "cap_event"]
