"""Sign-in for the pages (a cookie), health, and the landing redirect."""
from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

import redis as redis_lib
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from services.control.throttle import FailureThrottle

from services.control.auth import COOKIE, session_value, sign_in_page
from services.control.state import HEALTH_TIMEOUT_S, ControlState, StateDep

router = APIRouter(include_in_schema=False)


def _safe_next(path: str) -> str:
    # Only paths of this site: "//host" or "https://..." would send the user elsewhere.
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/status"
    return path


@router.get("/healthz")
async def healthz(state: StateDep) -> JSONResponse:
    """Answers within about a second whatever Redis does: ``redis: false`` when it does not
    answer in HEALTH_TIMEOUT_S (the client's own timeouts; wait_for bounds a pool that is full
    of connections stuck on a frozen server)."""
    client = state.health_redis or state.redis
    try:
        redis_ok = bool(await asyncio.wait_for(client.ping(), HEALTH_TIMEOUT_S * 1.5))
    except (redis_lib.RedisError, OSError, asyncio.TimeoutError):
        redis_ok = False
    return JSONResponse({"status": "ok", "redis": redis_ok})


def _throttle(request: Request, state: ControlState) -> FailureThrottle:
    throttle = getattr(request.app.state, "sign_in_throttle", None)
    if throttle is None:
        throttle = request.app.state.sign_in_throttle = FailureThrottle(
            state.settings.sign_in_failures, state.settings.sign_in_window_s)
    return throttle


@router.post("/auth/session")
async def sign_in(request: Request, state: StateDep, token: Annotated[str, Form(max_length=1024)] = "",
                  next_path: Annotated[str, Form(alias="next", max_length=2048)] = "/status"):
    throttle = _throttle(request, state)
    client = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(client)
    if wait > 0:
        return HTMLResponse(sign_in_page(_safe_next(next_path), "Too many wrong tries; wait a minute."),
                            status_code=429, headers={"Retry-After": str(int(wait) + 1)})
    if not token or not hmac.compare_digest(token.encode(), state.token.encode()):
        throttle.failed(client)
        return HTMLResponse(sign_in_page(_safe_next(next_path), "Wrong token."), status_code=401)
    response = RedirectResponse(_safe_next(next_path), status_code=303)
    # Secure whenever the browser reached us over HTTPS (directly or through a trusted proxy).
    secure = state.settings.secure_cookies or request.url.scheme == "https"
    response.set_cookie(COOKIE, session_value(state.token), httponly=True, samesite="strict",
                        secure=secure, max_age=30 * 24 * 3600, path="/")
    return response


@router.post("/auth/logout")
async def sign_out():
    response = RedirectResponse("/status", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
async def root():
    return RedirectResponse("/status", status_code=307)
