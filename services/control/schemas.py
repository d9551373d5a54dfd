"""What the job API answers: public views of the stored ``shared.jobs.JobRecord``.

The record also holds what only the runners need (process ids, the master address of a
multi-node job, the spec's fingerprint, the raw output lines of a failed run); the API shows
the job, not its machinery, so those never leave Redis."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from shared.jobs import JobKind, JobRecord, JobState
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
