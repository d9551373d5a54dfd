"""Every Redis key, stream and channel the services share, in one place.

All keys live under one prefix so a Redis shared with other software stays tidy, and so tests
can point two stacks at one server by changing the prefix.
"""
from __future__ import annotations

import os

PREFIX = os.environ.get("CNCLIP_REDIS_PREFIX", "cnclip")

# Celery queues
CRAWL_QUEUE = "crawl"
GPU_QUEUE = "gpu"


# ---- crawler pool -------------------------------------------------------------------------
def crawler_ranks() -> str:
    """Set of crawler ranks that have ever published a login state."""
    return f"{PREFIX}:crawler:ranks"


def crawler_login(rank: int) -> str:
    """Hash: the rank's LoginState fields (see shared.messages.LoginState)."""
    return f"{PREFIX}:crawler:{rank}:login"


def crawler_qr(rank: int) -> str:
    """String: the rank's current QR code as PNG bytes (absent when none is shown)."""
    return f"{PREFIX}:crawler:{rank}:qr"


def crawler_login_channel() -> str:
    """Pub/sub channel: a rank number is published whenever its login state changes."""
    return f"{PREFIX}:crawler:login-events"


def crawler_stats(rank: int) -> str:
    """Hash: counters of a rank (pages, queries, images, failures, last_seen)."""
    return f"{PREFIX}:crawler:{rank}:stats"


def crawler_live(rank: int) -> str:
    """Hash, short TTL, deleted when the check is passed or given up: the live view of a rank
    whose page needs a person (fields ``jpeg``, ``meta``: a LiveFrame as JSON)."""
    return f"{PREFIX}:crawler:{rank}:live"


def crawler_operator_input(rank: int) -> str:
    """List of OperatorInput JSON, short TTL: the operator's pointer and keys for the rank's
    browser, pushed by control and dispatched by the crawler in order."""
    return f"{PREFIX}:crawler:{rank}:operator-input"


def crawler_login_watched() -> str:
    """String with a TTL: set while someone has /login open (an idle rank refreshes its QR
    code only then, once its own refreshes are spent)."""
    return f"{PREFIX}:crawler:login-watched"


def crawler_account_pages(account: str) -> str:
    """Sorted set: one member per result page an account loaded, scored by its unix time
    (shared by every rank logged in as that account; kept a day)."""
    return f"{PREFIX}:crawler:account:{account}:pages"


def crawler_account_cooldown(account: str) -> str:
    """String: unix time until which the account loads no page (after a challenge), with the
    reason; expires with it."""
    return f"{PREFIX}:crawler:account:{account}:cooldown"


def crawl_done(request_id: str) -> str:
    """String set once a request's result was pushed: makes duplicate deliveries no-ops."""
    return f"{PREFIX}:crawl:done:{request_id}"


def crawl_failures() -> str:
    """Stream of per-image and per-query crawl failures (replaces the prototype's mark_log/)."""
    return f"{PREFIX}:crawl:failures"


def crawl_results(job_id: str, rank: int) -> str:
    """Stream a trainer rank reads its crawl results from (the request names it as reply_stream)."""
    return f"{PREFIX}:job:{job_id}:crawl:{rank}"


# ---- jobs ---------------------------------------------------------------------------------
def jobs_index() -> str:
    """Sorted set of job ids scored by creation time."""
    return f"{PREFIX}:jobs"


def job(job_id: str) -> str:
    """Hash: a job's record (see shared.jobs.JobRecord)."""
    return f"{PREFIX}:job:{job_id}"


def job_events(job_id: str) -> str:
    """Stream of a job's events (progress, metrics, log lines, state changes)."""
    return f"{PREFIX}:job:{job_id}:events"


def job_events_bytes(job_id: str) -> str:
    """Integer: bytes of event data in the job's stream (bounds the stream by size)."""
    return f"{PREFIX}:job:{job_id}:events:bytes"


def job_cancel(job_id: str) -> str:
    """String set when a job is to be cancelled; the runner polls it."""
    return f"{PREFIX}:job:{job_id}:cancel"


def idempotency(key: str) -> str:
    """String: the job id created for an idempotency key."""
    return f"{PREFIX}:idempotency:{key}"


def crawler_rank_claim(rank: int) -> str:
    """String with a TTL: which crawler worker holds a rank (refreshed while it lives)."""
    return f"{PREFIX}:crawler:{rank}:claim"


def run_name(name: str) -> str:
    """String: the job that holds a run name (the folder under experiments/), set atomically at
    submission so two jobs can never both start a new run under one name."""
    return f"{PREFIX}:run:{name}"


def jobs_index_by(kind: str | None = None, state: str | None = None) -> str:
    """Sorted set of the job ids of one kind and/or state, scored by creation time, so a
    filtered list reads only its page. The job scripts build these names from
    ``jobs_index_by_prefix()`` + ``<kind or *>:<state or *>``."""
    return f"{jobs_index_by_prefix()}{kind or '*'}:{state or '*'}"


def jobs_index_by_prefix() -> str:
    return f"{PREFIX}:jobs:by:"


def jobs_index_version() -> str:
    """String: set once the kind/state indexes hold every job (older data is indexed at start)."""
    return f"{jobs_index_by_prefix()}version"  # the create script builds it the same way
