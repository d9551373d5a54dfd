"""Messages that cross Redis between services.

Pydantic models give validation at the boundary (a malformed message is rejected with the
offending field named) and JSON for free. Image bytes never go through JSON: a crawl result is
a stream entry whose ``meta`` field is JSON and whose ``img<i>`` fields are raw JPEG bytes.
"""
from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

LoginStateName = Literal["starting", "waiting_for_scan", "logged_in", "expired", "error",
                         "needs_human"]
CrawlStatus = Literal["ok", "partial", "failed"]


class CrawlRequest(BaseModel):
    """One query to search for. ``request_id`` is deterministic (job, split, query) so a
    re-submission or a duplicate delivery is recognised."""

    request_id: str
    job_id: str
    split: str
    query: str
    n_images: int = Field(5, ge=1, le=100)
    deadline: float = Field(..., description="unix time after which the result is useless")
    reply_stream: str
    batch_index: int = -1


class MissingImage(BaseModel):
    url: str | None = None
    reason: str


class CrawlResult(BaseModel):
    request_id: str
    job_id: str
    split: str
    query: str
    normalized_query: str
    status: CrawlStatus
    rank: int
    elapsed_s: float
    missing: list[MissingImage] = []
    image_urls: list[str] = []
    images: list[bytes] = Field(default_factory=list, exclude=True)

    def to_stream_fields(self) -> dict[str, bytes]:
        fields: dict[str, bytes] = {"meta": self.model_dump_json().encode()}
        for i, data in enumerate(self.images):
            fields[f"img{i}"] = data
        return fields

    @classmethod
    def from_stream_fields(cls, fields: dict[Any, bytes]) -> "CrawlResult":
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        result = cls.model_validate_json(fields["meta"])
        keys = sorted((k for k in fields if k.startswith("img")), key=lambda k: int(k[3:]))
        result.images = [fields[k] for k in keys]
        return result


class LoginState(BaseModel):
    rank: int
    state: LoginStateName
    updated_at: float = Field(default_factory=time.time)
    since: float = Field(default_factory=time.time, description="when this state began")
    detail: str = ""
    qr_updated_at: float | None = None
    qr_expires_at: float | None = Field(None, description="when the code shown stops being valid")
    site: str = ""
    site_url: str = Field("", description="the address of the site this rank logs into")
    host: str = ""
    pid: int = 0

    def to_hash(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in self.model_dump().items()}

    @classmethod
    def from_hash(cls, data: dict[Any, Any]) -> "LoginState":
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in data.items()
        }
        return cls.model_validate(decoded)


class JobEvent(BaseModel):
    """A structured event of a job. The trainer writes these as JSON lines (one per line,
    ``type`` first); the job runner forwards them unchanged into the job's Redis stream.

    Types: ``train_step`` (step, total_steps, epoch, loss, lr, samples_per_s, logit_scale,
    img2txt_acc, txt2img_acc), ``validation`` (step, epoch, loss, acc, r1, r5, r10, mr),
    ``online`` (requested, received, failures, cache_hits, wait_s), ``ensemble`` (member,
    weight, progress, metrics), ``phase`` (name), ``checkpoint`` (path), ``log`` (level,
    message), ``state`` (state, reason), ``result`` (paths, metrics)."""

    type: str
    ts: float = Field(default_factory=time.time)
    job_id: str | None = None
    data: dict[str, Any] = {}
