"""The control service: job API, /login, /status, /metrics, OpenAPI docs at /docs."""
from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi.concurrency import run_in_threadpool

from services.control.auth import AuthMiddleware, resolve_token
from services.control.docs import add_docs
from services.control.errors import add_error_handlers
from services.control.headers import SecurityHeadersMiddleware
from services.control.limits import BodySizeLimitMiddleware
from services.control.metrics import LatencyMiddleware
from services.control.routes import jobs, login, operator, pages, results, search, status
from services.control.security import COMMON_RESPONSES, bearer
from services.control.settings import ControlSettings
from services.control.state import ControlState, StateDep
from services.control.throttle import FailureThrottle

HERE = Path(__file__).parent


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
    async def metrics(state: StateDep) -> Response:
        body = await run_in_threadpool(generate_latest, state.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    add_error_handlers(app)

    # Added innermost first: latency covers everything, including refused requests, and every
    # answer (refusals included) carries the security headers.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes,
                       larger={"/api/search/image": settings.search_upload_bytes})
    app.add_middleware(AuthMiddleware, token=token, throttle=app.state.sign_in_throttle)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(LatencyMiddleware, metrics=control.metrics, router_app=app)
    return app

