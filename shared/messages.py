"""Messages that cross Redis between services.

Pydantic models give validation at the boundary (a malformed message is rejected with the
offending field named) and JSON for free. Image bytes never go through JSON: a crawl result is
a stream entry whose ``meta`` field is JSON and whose ``img<i>`` fields are raw JPEG bytes.
"""
from __future__ import annotations

import json
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


# ------------------------------------------------------------------------ the operator's hands
OperatorInputKind = Literal["mousePressed", "mouseMoved", "mouseReleased", "wheel", "key", "text"]


class LiveFrame(BaseModel):
    """What goes with a live view's picture: which challenge it shows (input for another one
    is dropped), the page's viewport in CSS pixels (the picture's size) and the challenge's
    region in it, shown first."""

    challenge: str
    seq: int = 0
    width: int
    height: int
    region: tuple[int, int, int, int] = Field(description="x, y, width, height of the check")
    url: str = ""
    taken_at: float = Field(default_factory=time.time)


class OperatorInput(BaseModel):
    """One event of the operator's pointer or keyboard, in viewport CSS pixels of the page."""

    model_config = ConfigDict(extra="forbid")
    kind: OperatorInputKind
    x: float = Field(0.0, ge=0, le=20_000)
    y: float = Field(0.0, ge=0, le=20_000)
    delta_y: float = Field(0.0, ge=-20_000, le=20_000)
    # A named key (Enter, Backspace, Tab, Escape, arrows...) or one letter or digit.
    key: str = Field("", max_length=16)
    text: str = Field("", max_length=200)


class OperatorInputBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    challenge: str = Field(min_length=1, max_length=64)
    events: list[OperatorInput] = Field(min_length=1, max_length=200)


# ------------------------------------------------------------------------------ job events
# One model per event type is the one definition of that event's fields: producers are checked
# against it (``JobEvent.checked``) and consumers read its attributes. Every field may be absent
# (an event reports what its producer knows); a field the model does not declare is refused
# when an event is made and kept, unread, when one is read, so old streams stay readable.


class EventError(ValueError):
    """An event that does not match its type's model (unknown type, unknown field, bad value)."""


class EventPayload(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: ClassVar[str]

    def set_fields(self, *names: str) -> dict[str, Any]:
        """The named fields that carry a value, in the order named."""
        return {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}


class TrainStep(EventPayload):
    """Every ``--log-interval`` steps. ``logit_scale`` is the multiplier exp(logit_scale);
    the accuracies come with ``--report-training-batch-acc``."""

    type: ClassVar[str] = "train_step"
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    logit_scale: float | None = None
    img2txt_acc: float | None = None
    txt2img_acc: float | None = None

    FIGURES: ClassVar[tuple[str, ...]] = ("loss", "lr", "samples_per_s")  # what is charted

    def position(self) -> dict[str, Any]:
        return self.set_fields("step", "total_steps", "epoch")

    def figures(self) -> dict[str, Any]:
        return self.set_fields(*self.FIGURES)


class InBatchAccuracy(BaseModel):
    img2txt: float | None = None
    txt2img: float | None = None


class Validation(EventPayload):
    """Loss and in-batch accuracies over the validation pairs; R@1/5/10 and mean recall
    (percent, ``shared.muge``) over the split; ``predictions`` is the MUGE file written."""

    type: ClassVar[str] = "validation"
    step: int | None = None
    epoch: int | None = None
    loss: float | None = None
    img2txt_acc: float | None = None
    txt2img_acc: float | None = None
    acc: InBatchAccuracy | None = None
    r1: float | None = None
    r5: float | None = None
    r10: float | None = None
    mr: float | None = None
    texts: int | None = None
    images: int | None = None
    predictions: str | None = None

    def headline(self) -> dict[str, Any]:
        """Where it was taken and the figures a summary shows."""
        return self.set_fields("step", "epoch", "loss", "r1", "r5", "r10", "mr")


class OnlineBatch(EventPayload):
    """One batch of online learning: how many of its ``queries`` brought images (``pairs``,
    learnt from in each of the batch's ``steps``), why the others are ``missing`` (reason -> count, reasons in
    ``services/trainer/online/types.py``), pairs dropped as near-duplicates of the gallery,
    how long the batch waited for the crawlers, the online step's loss and number."""

    type: ClassVar[str] = "online"
    split: str | None = None
    batch: int | None = None
    pass_index: int | None = None
    image_index: int | None = None  # which crawled image of each query this pass learns from
    pairs_sha256: str | None = None  # digest of the (query, image) pairs used, in order: an audit
    queries: int | None = None
    pairs: int | None = None
    missing: dict[str, int] | None = None
    dropped_leaked: int | None = None
    # Pictures left out as disagreeing with the query's other pictures (online_keep_images).
    dropped_disagreeing: int | None = None
    replay_pairs: int | None = None  # offline pairs mixed into this batch's steps (online_replay)
    # Queries left uncrawled by active crawling (online_crawl_share): not asked for, not learnt from.
    skipped_active: int | None = None
    steps: int | None = None  # online steps this batch took (its share of the pass's budget)
    wait_ms: float | None = None
    loss: float | None = None  # of the batch's last step
    online_step: int | None = None

    def counts(self) -> dict[str, float]:
        """What adds up over batches (``missing`` as its total over the reasons)."""
        counts = self.set_fields("queries", "pairs", "dropped_leaked", "dropped_disagreeing", "replay_pairs",
                                 "skipped_active", "steps", "wait_ms")
        if self.missing is not None:
            counts["missing"] = sum(self.missing.values())
        return counts


class OnlinePass(EventPayload):
    """One pass of online learning over a split's queries (the totals of its batches)."""

    type: ClassVar[str] = "online_pass"
    split: str | None = None
    epoch: int | None = None
    pass_index: int | None = None
    queries: int | None = None
    pairs: int | None = None
    missing: dict[str, int] | None = None
    cache_hits: int | None = None
    dropped_leaked: int | None = None
    dropped_disagreeing: int | None = None
    replay_pairs: int | None = None
    skipped_active: int | None = None
    source: dict[str, float] | None = None  # the image source's own counters of the pass
    online_step: int | None = None
    wall_s: float | None = None
    steps: int | None = None


class OnlineState(EventPayload):
    """Live online learning and the crawler pool's login: ``waiting_for_login`` while no rank
    is logged in (up to ``timeout_s``), ``logged_in`` once one is."""

    type: ClassVar[str] = "online_state"
    state: Literal["waiting_for_login", "logged_in"] | None = None
    ranks: list[int] | None = None
    timeout_s: float | None = None
    message: str | None = None


class Checkpoint(EventPayload):
    type: ClassVar[str] = "checkpoint"
    path: str | None = None
    epoch: int | None = None
    step: int | None = None


class Ensemble(EventPayload):
    """Progress of an ensemble: one member (``member`` = its index or name) or, without
    ``member``, the fused result; ``progress: fitted`` carries the fitted and equal weights
    with their metrics."""

    type: ClassVar[str] = "ensemble"
    member: int | str | None = None
    checkpoint: str | None = None
    scores: str | None = None
    weight: float | None = None
    weights: list[float] | None = None
    progress: str | float | None = None
    metrics: dict[str, Any] | None = None
    equal_weights: list[float] | None = None
    equal_metrics: dict[str, Any] | None = None

    @property
    def member_key(self) -> str:
        return "fused" if self.member is None else str(self.member)


class Result(EventPayload):
    """What a run produced: ``paths`` (train: run_dir, checkpoints, latest; predict: the
    files written), ``metrics`` (train: the last validation; predict: MUGE metrics)."""

    type: ClassVar[str] = "result"
    paths: dict[str, Any] | list[str] | None = None
    metrics: dict[str, Any] | None = None
    steps: int | None = None


class State(EventPayload):
    """A job's state change, written by the state machine only."""

    type: ClassVar[str] = "state"
    state: str | None = None
    reason: str | None = None


class TrainerState(State):
    """A ``state`` event the trainer wrote, forwarded under this name."""

    type: ClassVar[str] = "trainer_state"


class Phase(EventPayload):
    type: ClassVar[str] = "phase"
    name: str | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None


class Log(EventPayload):
    """A message; level ``output`` is a line the trainer printed."""

    type: ClassVar[str] = "log"
    level: str | None = None
    message: str | None = None


EVENT_PAYLOADS: dict[str, type[EventPayload]] = {
    model.type: model
    for model in (TrainStep, Validation, OnlineBatch, OnlinePass, OnlineState, Checkpoint, Ensemble, Result,
                  State, TrainerState, Phase, Log)
}


class JobEvent(BaseModel):
    """A structured event of a job. The trainer writes these as JSON lines (one per line,
    ``type`` first); the job runner forwards them unchanged into the job's Redis stream.
    ``data`` holds the fields of the type's model in ``EVENT_PAYLOADS``."""

    type: str
    ts: float = Field(default_factory=time.time)
    job_id: str | None = None
    data: dict[str, Any] = {}

    @classmethod
    def of(cls, payload: EventPayload, job_id: str | None = None) -> "JobEvent":
        """The event carrying ``payload`` (only the fields that were given)."""
        return cls.checked(payload.type, payload.model_dump(mode="json", exclude_unset=True), job_id=job_id)

    @classmethod
    def checked(cls, type: str, data: dict[str, Any], job_id: str | None = None) -> "JobEvent":
        """An event whose data has been checked against its type's model; raises
        :class:`EventError` naming the type and the offending fields."""
        model = EVENT_PAYLOADS.get(type)
        if model is None:
            raise EventError(f"unknown event type {type!r}; known: {', '.join(sorted(EVENT_PAYLOADS))}")
        try:
            payload = model.model_validate(data)
        except ValidationError as exc:
            raise EventError(f"event {type!r}: {exc}") from None
        if payload.model_extra:
            raise EventError(f"event {type!r} has no field {', '.join(sorted(payload.model_extra))}")
        return cls(type=type, job_id=job_id, data=payload.model_dump(mode="json", exclude_unset=True))

    def payload(self) -> EventPayload | dict[str, Any]:
        """``data`` as its type's model; a plain dict for a type without a model or data that
        does not fit it (an event written by another version)."""
        model = EVENT_PAYLOADS.get(self.type)
        if model is None:
            return dict(self.data)
        try:
            return model.model_validate(self.data)
        except ValidationError:
            return dict(self.data)
