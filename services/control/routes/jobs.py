"""The job API: submit, list, read, follow (SSE) and cancel jobs."""
from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse

from shared import redis_keys
from shared.jobs import JobKind, JobNotFound, JobRecord, JobState, JobUnreadable, UnreadableJob
from shared.jobspec import IDEMPOTENCY_PATTERN, IndexSpec, JobSpec, PredictSpec, TrainSpec
from services.control.schemas import JobPublic, JobSummary, JobUnreadableSummary
from services.control.security import COMMON_RESPONSES, bearer
from services.control.state import ControlState, StateDep

JOB_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
STREAM_ID_PATTERN = r"^(0|\d{1,20}-\d{1,20})$"
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="Job id")]

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(bearer)], responses=COMMON_RESPONSES)


class ErrorBody(BaseModel):
    detail: str


class JobList(BaseModel):
    jobs: list[JobSummary | JobUnreadableSummary]
    total: int = Field(description="jobs that match the filter, all pages together")


_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_UNREADABLE: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The job's stored record cannot be read (the reason is given)"}}


def _refusal(spec: JobSpec, root) -> HTTPException | None:
    """What the data root tells about a spec before anything is queued: inputs that are not
    there or outputs that are or pass through a symbolic link (422, per field, as FastAPI
    reports body errors) and a run name already taken (409)."""
    problems = [("missing_input", p) for p in spec.missing_inputs(root)] + \
        [("linked_output", p) for p in spec.linked_outputs(root)]
    if problems:
        return HTTPException(422, [{"type": kind, "loc": ["body", p.split(":", 1)[0]],
                                    "msg": p.split(":", 1)[1].strip()} for kind, p in problems])
    if isinstance(spec, TrainSpec) and spec.name and not spec.continue_run \
            and spec.output_dir(root, spec.name).exists():
        return HTTPException(409, f"a run named {spec.name!r} already exists under experiments/; "
                                  "choose another name or set continue_run to continue it")
    return None


def _submit(state: ControlState, spec: JobSpec, key: str | None) -> tuple[JobRecord, bool]:
    root = state.settings.data_root
    key = key or spec.idempotency_key
    if state.settings.check_inputs and root.is_dir():
        known = state.sync_redis.get(redis_keys.idempotency(key)) if key else None
        refusal = None if known else _refusal(spec, root)
        if refusal is not None:
            raise refusal
    record, created = state.store.create(spec, idempotency_key=key)  # 409 on a conflict: errors.py
    if not created:
        return record, False
    try:
        state.send_job(record.id, spec.nnodes)
    except Exception as exc:  # the broker is unreachable: the job must not wait forever
        state.store.transition(record.id, "failed", reason=f"could not queue the job: {exc}")
        raise HTTPException(503, f"could not queue the job: {exc}") from exc
    return record, True


async def _create(spec: JobSpec, response: Response, state: ControlState, key: str | None) -> JobPublic:
    record, created = await run_in_threadpool(_submit, state, spec, key)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/jobs/{record.id}"
    return JobPublic.from_record(record)


_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": JobPublic, "description": "The job created earlier under this idempotency key"},
    400: {"model": ErrorBody, "description": "The body is not JSON"},
    401: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "Idempotency key reused with another spec, or the run name is taken"},
    503: {"model": ErrorBody, "description": "The broker is unreachable"}}

IdempotencyHeader = Annotated[str | None, Header(pattern=IDEMPOTENCY_PATTERN, alias="Idempotency-Key",
                                                 description="Overrides the spec's idempotency_key")]


@router.post("/train", status_code=201, response_model=JobPublic, responses=_SUBMIT_RESPONSES,
             summary="Submit a training job")
async def submit_train(spec: TrainSpec, response: Response, state: StateDep,
                       idempotency_key: IdempotencyHeader = None) -> JobPublic:
    return await _create(spec, response, state, idempotency_key)


@router.post("/predict", status_code=201, response_model=JobPublic, responses=_SUBMIT_RESPONSES,
             summary="Submit a prediction job (single, ensemble or ensemble-last)")
async def submit_predict(spec: PredictSpec, response: Response, state: StateDep,
                         idempotency_key: IdempotencyHeader = None) -> JobPublic:
    return await _create(spec, response, state, idempotency_key)


@router.post("/index", status_code=201, response_model=JobPublic, responses=_SUBMIT_RESPONSES,
             summary="Submit a gallery index build (embeddings and a FAISS index for search)")
async def submit_index(spec: IndexSpec, response: Response, state: StateDep,
                       idempotency_key: IdempotencyHeader = None) -> JobPublic:
    return await _create(spec, response, state, idempotency_key)


@router.get("", response_model=JobList, responses={401: {"model": ErrorBody}}, summary="List jobs, newest first")
async def list_jobs(state: StateDep,
                    job_state: Annotated[JobState | None, Query(alias="state")] = None,
                    kind: JobKind | None = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> JobList:
    """A filtered list reads its page from an index of jobs by kind and state, so it costs
    what the page costs; a record that cannot be read is listed as ``unreadable`` with why."""
    def page() -> tuple[list, int]:
        state.ensure_indexes()
        ids, total = state.store.filtered_ids(limit, offset, job_state, kind)
        return state.store.many_or_unreadable(ids), total
    records, total = await run_in_threadpool(page)
    return JobList(jobs=[JobUnreadableSummary(id=r.id, reason=r.reason) if isinstance(r, UnreadableJob)
                         else JobSummary.from_record(r) for r in records], total=total)


@router.get("/{job_id}", response_model=JobPublic, responses={**_ERRORS, **_UNREADABLE}, summary="One job")
async def get_job(job_id: JobId, state: StateDep) -> JobPublic:
    return JobPublic.from_record(await run_in_threadpool(state.store.get, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             responses={**_ERRORS, 409: {"model": ErrorBody, "description": "The job already ended"}},
             summary="Cancel a job (a running one is stopped with its whole process group)")
async def cancel_job(job_id: JobId, state: StateDep) -> JobPublic:
    return JobPublic.from_record(await run_in_threadpool(state.store.request_cancel, job_id))


@router.delete("/{job_id}", status_code=204, response_class=Response,
               responses={**_ERRORS, 409: {"model": ErrorBody, "description": "The job has not ended (cancel it first)"}},
               summary="Delete a finished job's record and events")
async def delete_job(job_id: JobId, state: StateDep) -> Response:
    def delete() -> None:
        try:
            state.store.get(job_id)
            unreadable = False
        except JobUnreadable:
            unreadable = True  # whatever state it claims, nothing can run it: it may go
        state.store.delete(job_id, unreadable=unreadable)
    await run_in_threadpool(delete)
    return Response(status_code=204)


@router.get("/{job_id}/series", responses=_ERRORS, summary="Chart data of a job (folded from its events)")
async def job_series(job_id: JobId, state: StateDep) -> dict[str, Any]:
    if not await state.redis.exists(redis_keys.job(job_id)):
        raise JobNotFound(job_id)
    return await state.series.get(state.redis, job_id)


@router.get("/{job_id}/events", responses={
    **_ERRORS, 200: {"description": "Server-sent events: one per job event (id = stream id, "
                                    "event = type, data = JobEvent JSON); ends when the job ends",
                     "content": {"text/event-stream": {}}},
    503: {"model": ErrorBody, "description": "Too many event streams open (see the capacity in the docs)"}},
    summary="Follow a job's events (SSE)", response_class=EventSourceResponse)
async def job_events(request: Request, job_id: JobId, state: StateDep,
                     after: Annotated[str | None, Query(pattern=STREAM_ID_PATTERN,
                                                        description="Resume after this event id")] = None,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None):
    if not await state.redis.exists(redis_keys.job(job_id)):
        raise JobNotFound(job_id)
    start = after or (last_event_id if last_event_id and re.match(STREAM_ID_PATTERN, last_event_id) else "0")
    refusal = state.followers.room_for(job_id)
    if refusal:
        raise HTTPException(503, f"too many event streams open: {refusal}; try again later",
                            headers={"Retry-After": "5"})
    # Followers of a job share one Redis reader (services/control/followers.py): however many
    # there are, they hold no connection of the API's pool.
    return EventSourceResponse(state.followers.follow(job_id, start), ping=state.settings.sse_ping_s)
