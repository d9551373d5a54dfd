"""``/jobs/{id}/results``: a prediction job's top-k pictures per query, the ground truth marked,
optionally beside another prediction job on the same texts (services/control/results.py)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from services.control import results
from services.control.routes.jobs import JOB_ID_PATTERN, JobId
from services.control.security import COMMON_RESPONSES, bearer
from services.control.state import StateDep

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(bearer)], responses=COMMON_RESPONSES)


@router.get("/{job_id}/results/data", summary="A prediction job's rankings per query, optionally compared",
            responses={404: {"description": "No such job"}, 409: {"description": "The job(s) have no results to show"}})
async def results_data(job_id: JobId, state: StateDep,
                       compare: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
                       filter: results.Filter = "all", sort: results.Sort = "file",
                       limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> dict[str, Any]:
    def build() -> dict[str, Any]:
        root = state.settings.data_root
        base = results.load(state.store.get(job_id), root)
        other = results.load(state.store.get(compare), root) if compare else None
        return results.view(base, other, filter=filter, sort=sort, limit=limit, offset=offset)

    return await run_in_threadpool(build)


@router.get("/{job_id}/results", response_class=HTMLResponse, include_in_schema=False)
async def results_page(job_id: JobId, request: Request):
    return request.app.state.templates.TemplateResponse(
        request, "results.html", {"title": f"Results of {job_id}", "job_id": job_id})
