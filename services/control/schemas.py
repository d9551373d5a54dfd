"""What the API answers: public views of what is stored (``shared.jobs.JobRecord``, the crawler
ranks' ``shared.messages.LoginState`` and counters), declared as models so ``/docs`` shows them.

The job record also holds what only the runners need (process ids, the master address of a
multi-node job, the spec's fingerprint, the raw output lines of a failed run); the API shows
the job, not its machinery, so those never leave Redis."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from shared.jobs import JobKind, JobRecord, JobState
from shared.messages import LoginState, LoginStateName
from shared.jobspec import JobSpec

ERROR_LINES = 15  # of a failed run's output, shown as its error
ERROR_CHARS = 4000


class JobBrief(BaseModel):
    """What every view of a job shows."""

    id: str
    kind: JobKind
    state: JobState
    reason: str = ""
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    progress: dict[str, Any] = {}


class JobSummary(JobBrief):
    """One line of a job list."""

    name: str | None = Field(None, description="the spec's name, when it has one")

    @classmethod
    def from_record(cls, record: JobRecord) -> "JobSummary":
        return cls(name=getattr(record.spec, "name", None), **_shared_fields(cls, record))


class JobUnreadableSummary(BaseModel):
    """A list's line for a job whose stored record cannot be read: the rest is still listed."""

    id: str
    state: Literal["unreadable"] = "unreadable"
    reason: str = Field(description="what is wrong with the stored record")


class JobPublic(JobBrief):
    """One job as the API shows it."""

    spec: Annotated[JobSpec, Field(discriminator="kind")]
    idempotency_key: str | None = None
    runner_host: str = Field("", description="the machine that runs it")
    heartbeat_at: float | None = None
    resume_from: str = Field("", description="the checkpoint a resumed run continued from")
    cancel_requested: bool = False
    result: dict[str, Any] = {}
    error: str = Field("", description="the last lines a failed run printed")

    @classmethod
    def from_record(cls, record: JobRecord) -> "JobPublic":
        return cls(error=error_summary(record.log_tail), **_shared_fields(cls, record))


def _shared_fields(model: type[BaseModel], record: JobRecord) -> dict[str, Any]:
    """The record's values of the fields ``model`` declares under the same name."""
    return {name: getattr(record, name) for name in model.model_fields if name in JobRecord.model_fields}


def error_summary(log_tail: list[str]) -> str:
    text = "\n".join(log_tail[-ERROR_LINES:])
    return text[-ERROR_CHARS:]



# ---- crawler ranks (``/api/login``) ------------------------------------------------------------
# A rank whose worker stopped sending heartbeats shows ``crawler_pool.OFFLINE``.
RankState = LoginStateName | Literal["offline"]


class LoginView(LoginState):
    """A crawler rank's login state as the ``/login`` page shows it."""

    state: RankState
    has_qr: bool = Field(description="a QR code waits to be scanned")
    qr_url: str | None = Field(None, description="where its picture is (changes with each new code)")
    qr_expires_in_s: float | None = Field(
        None, description="seconds the code stays valid, by this server's clock")


# ---- ``/api/status`` ---------------------------------------------------------------------------
class JobView(BaseModel):
    kind: str = Field(description="train, single, ensemble, online, index (or unreadable)")
    run: str = Field(description="the run the job belongs to (a training name or checkpoint folder)")


class StatusJob(BaseModel):
    """One job's line of the status page: the record's figures, every string and list cut short
    (a job whose record cannot be read shows ``state: unreadable`` and why)."""

    id: str
    kind: str
    state: str
    reason: str = ""
    created_at: float | None = None
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    attempts: int = 0
    progress: dict[str, Any] = Field({}, description="the latest figures (docs/architecture.md, Jobs)")
    result: dict[str, Any] = {}
    spec: dict[str, Any] = Field({}, description="the spec's fields a person looks for (name, mode, online, ...)")
    view: JobView


class LastFailure(BaseModel):
    reason: str
    query: str | None = None
    ts: float | None = None


class CrawlerRank(BaseModel):
    rank: int
    state: RankState
    since: float
    updated_at: float
    detail: str = ""
    host: str = ""
    site: str = ""
    pages_per_min: float | None = None
    pages: float | None = None
    queries: float | None = None
    images: float | None = None
    failures: float | None = None
    last_seen: float | None = None
    current_query: str | None = None
    last_failure: LastFailure | None = None
    login_url: str


class CrawlerPool(BaseModel):
    ranks: list[CrawlerRank]
    queue_depth: int = Field(description="crawl requests waiting in the broker")
    logged_in: int = Field(description="ranks logged in")


class StatusAnswer(BaseModel):
    now: float = Field(description="the server's clock when the answer was built")
    total_jobs: int
    shown_counts: dict[str, int] = Field(description="jobs shown, by state")
    jobs: list[StatusJob] = Field(description="the newest jobs, newest first")
    crawler: CrawlerPool
