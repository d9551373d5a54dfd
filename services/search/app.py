"""The search service's HTTP API (docs/architecture.md, "Search").

    GET  /api/search?index=NAME&q=TEXT&k=K     text -> the index's top k images
    POST /api/search/image?index=NAME&k=K      picture (the request body) -> top k images
    GET  /api/search/indexes                   the indexes under the data root
    GET  /api/search/thumbs/{index}/{image_id} a gallery image, small
    GET  /api/search/gallery-thumb?gallery=REL&id=ID  an image of any gallery under the data root
    GET  /healthz                              open: alive, and which indexes are loaded

Every other route needs the control service's token (``Authorization: Bearer``): the browser
never talks to this service, the control service does, for a signed-in user.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from services.search.batching import TextBatcher
from services.search.indexes import IndexRegistry, IndexUnavailable, UnknownIndex, available
from services.search.queries import MAX_K, BadQuery, clean_query
from services.search.settings import SearchSettings
from services.search.thumbs import NoSuchImage, Thumbnails
from shared.image_validation import ImageRules, InvalidImage, prepare_image

OPEN_PATHS = frozenset({"/healthz"})
IndexName = Annotated[str, Query(min_length=1, max_length=64, description="index name (experiments/<name>/index)")]
TopK = Annotated[int, Query(ge=1, le=MAX_K, description="results wanted")]
THUMB_CACHE_CONTROL = "private, max-age=3600"


class MissingToken(RuntimeError):
    pass


def resolve_token(settings: SearchSettings) -> str:
    if settings.control_token is not None and settings.control_token.get_secret_value():
        return settings.control_token.get_secret_value()
    if settings.control_token_file and settings.control_token_file.is_file():
        token = settings.control_token_file.read_text().strip()
        if token:
            return token
    raise MissingToken("the search service trusts only the control service's token: set CNCLIP_CONTROL_TOKEN "
                       "(or CNCLIP_SEARCH_CONTROL_TOKEN_FILE)")


class TokenMiddleware:
    """Only requests that carry the control token reach the routes."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers", [])).get(b"authorization", b"")
        if hmac.compare_digest(auth, self.expected):
            return await self.app(scope, receive, send)
        body = b'{"detail":"authentication required: the control service\'s token"}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="cnclip-search"')]})
        await send({"type": "http.response.body", "body": body})


def _answer(name: str, hits: list[tuple[Any, float]], k: int, started: float, **extra: Any) -> Response:
    """The JSON answer, encoded here: FastAPI would otherwise validate the returned dict against
    the route's annotation on the event loop, per request, for a shape fixed right here."""
    payload = {"index": name, "k": k, **extra, "took_ms": round((time.perf_counter() - started) * 1000, 2),
               "results": [{"id": image_id, "score": round(score, 5),
                            "thumbnail": f"/api/search/thumbs/{quote(name)}/{quote(str(image_id), safe='')}"}
                           for image_id, score in hits]}
    return Response(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
                    media_type="application/json")


def create_app(settings: SearchSettings | None = None) -> FastAPI:
    from services.search import compute
    from services.trainer.engine.precision import resolve_device

    settings = settings or SearchSettings()
    token = resolve_token(settings)
    threads = compute.configure(settings.threads)
    registry = IndexRegistry(settings.experiments, resolve_device(settings.device),
                             settings.memory_budget_mb * 1024 * 1024)
    thumbs = Thumbnails(settings.thumb_size, settings.thumb_cache)
    batcher = TextBatcher(settings.max_batch)
    upload_rules = ImageRules(max_bytes=settings.max_upload_bytes, target_short_side=0)

    app = FastAPI(title="Online-CNCLIP search", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.registry = registry
    app.state.threads = threads

    def loaded(name: str):
        try:
            return registry.get(name)
        except UnknownIndex as exc:
            raise HTTPException(404, str(exc)) from None
        except IndexUnavailable as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "loaded": registry.loaded, "threads": threads}

    @app.get("/api/search/indexes")
    async def indexes() -> dict[str, Any]:
        return {"indexes": await run_in_threadpool(available, settings.experiments), "loaded": registry.loaded}

    @app.get("/api/search")
    async def search_text(index: IndexName, q: Annotated[str, Query(max_length=10_000_000)] = "",
                          k: TopK = 10) -> Response:
        started = time.perf_counter()
        try:
            text = clean_query(q)
        except BadQuery as exc:
            raise HTTPException(422, str(exc)) from None

        # Loaded indexes are answered without a thread hop; loading one runs beside the event loop.
        target = registry.cached(index) or await run_in_threadpool(loaded, index)
        hits = await asyncio.wrap_future(batcher.submit(target, text, k))
        return _answer(index, hits, k, started, query=text)

    @app.post("/api/search/image")
    async def search_image(request: Request, index: IndexName, k: TopK = 10) -> Response:
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise HTTPException(413, f"the picture is larger than {settings.max_upload_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_upload_bytes:
                raise HTTPException(413, f"the picture is larger than {settings.max_upload_bytes} bytes")
        if not body:
            raise HTTPException(422, "no picture: send the image bytes as the request body")

        def run() -> list[tuple[Any, float]]:
            from PIL import Image
            import io

            try:
                image = Image.open(io.BytesIO(prepare_image(bytes(body), upload_rules)))
            except InvalidImage as exc:
                raise HTTPException(422, f"unusable picture: {exc.reason}") from None
            target = loaded(index)
            return target.search(target.encode_image(image), k)[0]

        return _answer(index, await run_in_threadpool(run), k, started)

    @app.get("/api/search/thumbs/{index}/{image_id}")
    async def thumbnail(index: Annotated[str, PathParam(max_length=64)],
                        image_id: Annotated[str, PathParam(min_length=1, max_length=256)]) -> Response:
        def run() -> bytes:
            target = loaded(index)
            try:
                return thumbs.get(target.manifest.gallery, image_id)
            except NoSuchImage as exc:
                raise HTTPException(404, str(exc)) from None

        data = await run_in_threadpool(run)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": THUMB_CACHE_CONTROL})

    @app.get("/api/search/gallery-thumb")
    async def gallery_thumbnail(gallery: Annotated[str, Query(min_length=1, max_length=1024)],
                                id: Annotated[str, Query(min_length=1, max_length=256)]) -> Response:
        """A picture of any gallery LMDB under the data root (a prediction job's results)."""
        from shared.jobspec import PathOutsideDataRoot, resolve_under

        try:
            split = resolve_under(settings.data_root, gallery)
        except (PathOutsideDataRoot, ValueError) as exc:
            raise HTTPException(422, f"gallery: {exc}") from None

        def run() -> bytes:
            try:
                return thumbs.get(split, id)
            except NoSuchImage as exc:
                raise HTTPException(404, str(exc)) from None

        data = await run_in_threadpool(run)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": THUMB_CACHE_CONTROL})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # One line per problem, naming the parameter; never the input echoed back.
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}"
                    for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    app.add_middleware(TokenMiddleware, token=token)
    return app


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging
    import sys

    import uvicorn
    from pydantic import ValidationError

    parser = argparse.ArgumentParser(prog="cnclip-search", description="Run the search service.")
    parser.add_argument("--host", default=None, help="default: CNCLIP_SEARCH_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: CNCLIP_SEARCH_PORT or 8700")
    args = parser.parse_args(argv)
    try:
        settings = SearchSettings()
    except ValidationError as exc:
        print(f"cnclip-search: invalid setting in the environment (CNCLIP_SEARCH_*):\n{exc}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    try:
        app = create_app(settings)
    except MissingToken as exc:
        print(f"cnclip-search: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper())
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                server_header=False, access_log=False)
    return 0


__all__ = ["create_app", "main"]
