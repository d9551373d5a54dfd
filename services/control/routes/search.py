"""``/api/search...`` proxied to the search service, and the ``/search`` page.

The browser talks to one origin: this service signs the user in, applies its security headers
and forwards the request with the control token, the one credential the search service
trusts. What the search service answers (status, JSON detail, thumbnail bytes, Cache-Control)
is passed back as it is; when it cannot be reached the answer is a 503 that says so.
"""
from __future__ import annotations

from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.control.security import bearer
from services.control.state import ControlState, StateDep

# The search service's own API (docs/architecture.md, "Search"); not in this service's schema.
router = APIRouter(include_in_schema=False, dependencies=[Depends(bearer)])
PASSED_HEADERS = ("content-type", "cache-control")


def _client(request: Request, state: ControlState) -> httpx.AsyncClient:
    client = getattr(request.app.state, "search_client", None)
    if client is None:
        client = request.app.state.search_client = httpx.AsyncClient(
            base_url=state.settings.search_url.rstrip("/"), timeout=state.settings.search_timeout_s,
            headers={"Authorization": f"Bearer {state.token}"})
    return client


async def _forward(request: Request, state: ControlState, path: str) -> Response:
    body = await request.body() if request.method == "POST" else None
    headers = {"content-type": request.headers["content-type"]} if body and "content-type" in request.headers else {}
    try:
        answer = await _client(request, state).request(
            request.method, path, params=list(request.query_params.multi_items()), content=body, headers=headers)
    except httpx.HTTPError as exc:
        return JSONResponse({"detail": f"the search service at {state.settings.search_url} cannot be reached: "
                                       f"{type(exc).__name__}"}, status_code=503)
    kept = {k: v for k, v in answer.headers.items() if k.lower() in PASSED_HEADERS}
    return Response(answer.content, status_code=answer.status_code, headers=kept)


@router.get("/api/search")
async def search_text(request: Request, state: StateDep) -> Response:
    return await _forward(request, state, "/api/search")


@router.get("/api/search/indexes")
async def search_indexes(request: Request, state: StateDep) -> Response:
    return await _forward(request, state, "/api/search/indexes")


@router.post("/api/search/image")
async def search_image(request: Request, state: StateDep) -> Response:
    return await _forward(request, state, "/api/search/image")


@router.get("/api/search/thumbs/{index}/{image_id}")
async def search_thumb(index: str, image_id: str, request: Request,
                       state: StateDep) -> Response:
    return await _forward(request, state, f"/api/search/thumbs/{quote(index, safe='')}/{quote(image_id, safe='')}")


@router.get("/api/search/gallery-thumb")
async def search_gallery_thumb(request: Request, state: StateDep) -> Response:
    return await _forward(request, state, "/api/search/gallery-thumb")


@router.get("/search", response_class=HTMLResponse)
async def search_page(request: Request):
    return request.app.state.templates.TemplateResponse(request, "search.html", {"title": "Search"})
