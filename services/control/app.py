"""The control service: job API, /login, /status, /metrics, OpenAPI docs at /docs."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import redis as redis_lib
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi.concurrency import run_in_threadpool

from services.control.auth import AuthMiddleware, resolve_token
from services.control.docs import add_docs
from services.control.headers import SecurityHeadersMiddleware
from services.control.limits import BodySizeLimitMiddleware
from services.control.metrics import LatencyMiddleware
from services.control.routes import jobs, login, operator, pages, results, search, status
from services.control.security import COMMON_RESPONSES, bearer
from services.control.settings import ControlSettings
from services.control.state import ControlState, get_state
from services.control.throttle import FailureThrottle

HERE = Path(__file__).parent


def jsonable_errors(errors) -> list[dict]:
    out = []
    for error in errors:
        item = {"type": error.get("type"), "loc": list(error.get("loc", ())), "msg": error.get("msg")}
        try:
            item["input"] = json.loads(json.dumps(error.get("input"), allow_nan=False, default=str))
        except (TypeError, ValueError):
            pass
        out.append(item)
    return out


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    settings = settings or ControlSettings()
    token = resolve_token(settings)  # refuses a non-loopback address without a token
    control = ControlState.build(settings, token)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await control.close()
        search_client = getattr(_app.state, "search_client", None)
        if search_client is not None:
            await search_client.aclose()

    app = FastAPI(title="Online-CNCLIP control",
                  description="Submit and follow training and prediction jobs; watch the crawler pool.",
                  version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.control = control
    app.state.status_cache = status.StatusCache(settings.status_cache_s)
    # One limiter of wrong tokens for the sign-in form and every other way a token is presented.
    app.state.sign_in_throttle = FailureThrottle(settings.sign_in_failures, settings.sign_in_window_s)
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.include_router(pages.router)
    app.include_router(jobs.router)
    app.include_router(login.router)
    app.include_router(operator.router)
    app.include_router(status.router)
    app.include_router(search.router)
    app.include_router(results.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    add_docs(app)

    @app.get("/metrics", tags=["metrics"], dependencies=[Depends(bearer)],
             response_class=Response, responses={200: {"content": {"text/plain": {}}}, **COMMON_RESPONSES},
             summary="Prometheus metrics")
    async def metrics(state: ControlState = Depends(get_state)) -> Response:
        body = await run_in_threadpool(generate_latest, state.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input, and a NaN or an infinity cannot be
        # written as JSON: report where and why, with the input only when JSON can carry it.
        return JSONResponse({"detail": jsonable_errors(exc.errors())}, status_code=422)

    @app.exception_handler(redis_lib.RedisError)
    async def redis_unavailable(_request: Request, exc: redis_lib.RedisError) -> JSONResponse:
        return JSONResponse({"detail": f"Redis is unavailable: {exc}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc)}, status_code=422)

    # Added innermost first: latency covers everything, including refused requests, and every
    # answer (refusals included) carries the security headers.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes,
                       larger={"/api/search/image": settings.search_upload_bytes})
    app.add_middleware(AuthMiddleware, token=token, throttle=app.state.sign_in_throttle)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(LatencyMiddleware, metrics=control.metrics, router_app=app)
    return app


def validation_errors(exc: RequestValidationError) -> list[dict]:
    """The errors without the offending input: FastAPI's default answer echoes it, which fails
    (500) for values JSON cannot carry (NaN, infinity) and repeats whatever a client sent."""
    errors = []
    for error in exc.errors():
        errors.append({"loc": [part if isinstance(part, (str, int)) else str(part)
                               for part in error.get("loc", ())],
                       "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))})
    return errors
