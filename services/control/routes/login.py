"""The crawler ranks' QR codes and login states, live."""
from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response
from sse_starlette.sse import EventSourceResponse

from shared import redis_keys
from services.control.crawler_pool import drop_dead_qr, login_views, ranks_alive
from services.control.login_feed import SNAPSHOT
from services.control.schemas import LoginView
from services.control.security import COMMON_RESPONSES, bearer
from services.control.state import StateDep

router = APIRouter(tags=["login"], dependencies=[Depends(bearer)], responses=COMMON_RESPONSES)
Rank = Annotated[int, Path(ge=0, le=1_000_000, description="Crawler rank")]


@router.get("/api/login", summary="Login state of every crawler rank", response_model=list[LoginView])
async def login_api(state: StateDep) -> list[dict[str, Any]]:
    return await login_views(state.redis)


@router.get("/login/{rank}/qr.png", summary="The QR code a crawler rank waits to have scanned",
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "No code shown"}},
            response_class=Response)
async def qr_png(rank: Rank, state: StateDep) -> Response:
    if not (await ranks_alive(state.redis, [rank]))[rank]:
        await drop_dead_qr(state.redis, rank)
        raise HTTPException(404, f"rank {rank} is offline: no crawler holds it, so it shows no QR code")
    data = await state.redis.get(redis_keys.crawler_qr(rank))
    if not data:
        raise HTTPException(404, f"rank {rank} shows no QR code")
    # A QR code is a key to the shopping account: never cached anywhere.
    return Response(data, media_type="image/png",
                    headers={"Cache-Control": "no-store, private", "Pragma": "no-cache"})


@router.get("/api/login/events", include_in_schema=False)
async def login_events(request: Request, state: StateDep):
    """A snapshot of every rank, then one event per rank whose state changes (the crawler
    publishes the rank number on a channel); re-sent in full now and then in case a
    notification was missed."""

    async def stream():
        # One shared subscription feeds every open page (services/control/login_feed.py).
        queue = state.login_feed.join()
        try:
            yield {"event": "snapshot", "data": json.dumps(await login_views(state.redis))}
            loop = asyncio.get_running_loop()
            last_snapshot = loop.time()
            while True:
                try:
                    view = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    view = None
                if view == SNAPSHOT or (view is None and loop.time() - last_snapshot > 30):
                    last_snapshot = loop.time()
                    yield {"event": "snapshot", "data": json.dumps(await login_views(state.redis))}
                elif view is not None:
                    yield {"event": "rank", "data": json.dumps(view)}
        finally:
            state.login_feed.leave(queue)

    return EventSourceResponse(stream(), ping=state.settings.sse_ping_s)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_page(request: Request):
    return request.app.state.templates.TemplateResponse(request, "login.html", {"title": "Crawler login"})
