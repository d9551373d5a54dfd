"""The demo shop: a small shopping site whose pages look like Taobao's where a crawler looks
(see "Shop DOM" in docs/architecture.md), with a QR login and switchable faults for tests.
"""
from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import segno
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from services.shop import images
from services.shop.catalog import Catalog
from services.shop.faults import FaultBook, Faults
from services.shop.sessions import LoginBook, Session, qr_payload
from services.shop.settings import ShopSettings
from services.shop.stats import Stats
from services.shop.taobao_skin import add_taobao_skin

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
# A 1x1 transparent GIF: what an item's picture shows until it is scrolled into view.
PLACEHOLDER_SRC = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class Shop:
    settings: ShopSettings
    catalog: Catalog
    pictures: images.PictureStore
    faults: FaultBook
    logins: LoginBook
    stats: Stats

    def session_of(self, request: Request) -> Session | None:
        return self.logins.session(request.cookies.get(self.settings.session_cookie))

    def reset(self, sessions: bool = True) -> None:
        self.faults.clear()
        self.stats.reset()
        if sessions:
            self.logins.reset()


def safe_redirect(target: str | None) -> str:
    """Only paths on this site: an open redirect to another host would be a phishing aid."""
    if not target or not target.startswith("/") or target.startswith("//") or target.startswith("/\\"):
        return "/"
    return target


def _login_redirect(request: Request) -> RedirectResponse:
    original = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?redirect={quote(original, safe='')}", status_code=302)


def create_app(settings: ShopSettings | None = None) -> FastAPI:
    settings = settings or ShopSettings()
    catalog = Catalog(seed=settings.seed, results_per_query=settings.results_per_query,
                      wrong_item_rate=settings.wrong_item_rate, max_query_chars=settings.max_query_chars)
    shop = Shop(
        settings=settings,
        catalog=catalog,
        pictures=images.PictureStore(catalog, size=settings.image_size, quality=settings.jpeg_quality,
                                     cache_items=settings.image_cache_items),
        faults=FaultBook(),
        logins=LoginBook(qr_ttl_s=settings.qr_token_ttl_s, session_ttl_s=settings.session_ttl_s,
                         nick=settings.nick),
        stats=Stats(),
    )
    app = FastAPI(title="cnclip demo shop", docs_url=None, redoc_url=None)
    app.state.shop = shop

    async def page_delay() -> None:
        delay = shop.faults.current().page_delay_s
        if delay:
            await asyncio.sleep(delay)

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("session", shop.session_of(request))
        context.setdefault("query", "")
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code,
                                          headers=NO_STORE)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> HTMLResponse:
        shop.stats.add("home")
        await page_delay()
        return page(request, "home.html")

    @app.get("/search", response_class=HTMLResponse)
    async def search(request: Request, q: str = "", s: int = Query(0, ge=0)) -> Response:
        shop.stats.add("search")
        await page_delay()
        if shop.session_of(request) is None:
            shop.stats.add("search_login_redirect")
            return _login_redirect(request)
        if shop.faults.session_expires_now():
            shop.stats.add("sessions_expired", shop.logins.expire_sessions())
            shop.stats.add("search_login_redirect")
            return _login_redirect(request)
        if shop.faults.take("captcha"):
            shop.stats.add("search_captcha")
            return TEMPLATES.TemplateResponse(request, "captcha.html", {}, headers=NO_STORE)
        if shop.faults.take("search_error"):
            shop.stats.add("search_error")
            return HTMLResponse("<html><body><h1>500 服务器繁忙</h1></body></html>", status_code=500)
        query = catalog.clean(q)
        total = 0 if shop.faults.take("empty_results") else catalog.total(query)
        size = settings.page_size
        items = catalog.page(query, s, size) if s < total else []
        shop.stats.add("search_served" if items else "search_empty")
        return page(
            request, "search.html", query=query, items=items, total=total, placeholder=PLACEHOLDER_SRC,
            page_number=s // size + 1, page_count=max(1, -(-total // size)),
            prev_offset=max(0, s - size) if s > 0 else None,
            next_offset=s + size if s + size < total else None,
        )

    @app.get("/item/{nid}", response_class=HTMLResponse)
    async def item_page(request: Request, nid: str, q: str = "") -> HTMLResponse:
        shop.stats.add("item")
        await page_delay()
        query = catalog.clean(q)
        index = catalog.index_of(query, nid)
        if index is None:
            raise HTTPException(404, "no such item")
        return page(request, "item.html", query=query, item=catalog.item(query, index))

    @app.get("/img/{nid}.jpg")
    def picture(nid: str, q: str = "") -> Response:
        # A plain def: rendering is CPU work and runs in the thread pool.
        shop.stats.add("image")
        delay = shop.faults.current().image_delay_s
        if delay:
            time.sleep(delay)
        query = catalog.clean(q)
        index = catalog.index_of(query, nid)
        if index is None:
            shop.stats.add("image_not_found")
            raise HTTPException(404, "no such item")
        fault = shop.faults.image_fault(query, index)
        if fault is not None:
            shop.stats.add(f"image_fault_{fault}")
        if fault == "html":
            return HTMLResponse(images.HTML_INSTEAD_OF_IMAGE, headers=NO_STORE)
        if fault == "bomb":
            return Response(images.decompression_bomb(settings.bomb_side), media_type="image/png",
                            headers=NO_STORE)
        served = shop.faults.picture(query, index, catalog.clean)
        jpeg = served or shop.pictures.jpeg(query, index)
        if fault == "truncated":
            return Response(images.truncated(jpeg), media_type="image/jpeg", headers=NO_STORE)
        if fault == "huge":
            return Response(images.huge(jpeg, settings.huge_image_bytes), media_type="image/jpeg",
                            headers=NO_STORE)
        return Response(jpeg, media_type="image/jpeg",
                        headers=NO_STORE if served else {"Cache-Control": "public, max-age=86400"})

    # ---- QR login -------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    async def login(request: Request, redirect: str = "/") -> Response:
        shop.stats.add("login")
        await page_delay()
        target = safe_redirect(redirect)
        if shop.session_of(request) is not None:
            return RedirectResponse(target, status_code=302)
        token = shop.logins.new_token()
        return page(request, "login.html", token=token, redirect=target, poll_ms=settings.qr_poll_ms)

    @app.get("/qr/{token}.png")
    def qr_image(token: str) -> Response:
        shop.stats.add("qr_image")
        if shop.logins.token_state(token) is None:
            raise HTTPException(404, "unknown login code")
        out = io.BytesIO()
        segno.make(qr_payload(token), error="m", micro=False).save(out, kind="png", scale=6, border=4)
        return Response(out.getvalue(), media_type="image/png", headers=NO_STORE)

    @app.get("/qr/{token}/status")
    async def qr_status(token: str) -> JSONResponse:
        shop.stats.add("qr_status")
        state = shop.logins.token_state(token)
        if state is None:
            return JSONResponse({"state": "expired", "known": False}, status_code=404, headers=NO_STORE)
        return JSONResponse({"state": state, "known": True}, headers=NO_STORE)

    @app.post("/qr/{token}/confirm")
    async def qr_confirm(token: str) -> JSONResponse:
        """What the phone app does after scanning the code."""
        shop.stats.add("qr_confirm")
        state = shop.logins.confirm(token)
        if state is None:
            return JSONResponse({"error": "unknown login code"}, status_code=404)
        if state == "expired":
            return JSONResponse({"error": "login code expired", "state": state}, status_code=410)
        return JSONResponse({"state": state})

    @app.get("/qr/{token}/complete")
    async def qr_complete(token: str, redirect: str = "/") -> RedirectResponse:
        shop.stats.add("qr_complete")
        target = safe_redirect(redirect)
        session = shop.logins.complete(token)
        if session is None:
            return RedirectResponse(f"/login?redirect={quote(target, safe='')}", status_code=302)
        response = RedirectResponse(target, status_code=302)
        response.set_cookie(settings.session_cookie, session.session_id, max_age=int(settings.session_ttl_s),
                            path="/", httponly=True, samesite="lax")
        return response

    # The Taobao-like skin, under paths named after Taobao's hosts (the demo keeps this one).
    add_taobao_skin(app, shop)
    if settings.test_endpoints:
        _add_test_endpoints(app, shop)
    return app


def _add_test_endpoints(app: FastAPI, shop: Shop) -> None:
    """Switches for tests: faults, QR tokens, session expiry, counters. See faults.py for the
    meaning of each fault."""

    @app.get("/_test/faults")
    async def get_faults() -> dict:
        return shop.faults.current().model_dump()

    @app.post("/_test/faults")
    async def set_faults(changes: dict[str, Any] = Body(...)) -> JSONResponse:
        """Sets the given fault fields, keeps the others; a bad field changes nothing (422)."""
        try:
            return JSONResponse(shop.faults.update(changes).model_dump())
        except ValidationError as error:
            return JSONResponse({"detail": error.errors(include_url=False, include_context=False)},
                                status_code=422)

    @app.delete("/_test/faults")
    async def clear_faults() -> dict:
        shop.faults.clear()
        return Faults().model_dump()

    @app.get("/_test/tokens")
    async def tokens() -> dict:
        return {"tokens": shop.logins.tokens()}

    @app.post("/_test/sessions/expire")
    async def expire_sessions() -> dict:
        expired = shop.logins.expire_sessions()
        shop.stats.add("sessions_expired", expired)
        return {"expired": expired}

    @app.get("/_test/stats")
    async def stats() -> dict:
        return {"counts": shop.stats.snapshot(), "active_sessions": shop.logins.active_sessions(),
                "image_cache": shop.pictures.cache_info()}

    @app.get("/_test/items")
    async def items(q: str, start: int = Query(0, ge=0), count: int = Query(44, ge=1, le=1000)) -> dict:
        """The query's results as the shop will show them, with the fault each image gets."""
        query = shop.catalog.clean(q)
        found = shop.catalog.page(query, start, count)
        return {"query": query, "total": shop.catalog.total(query), "items": [
            {"index": it.index, "nid": it.nid, "title": it.title, "wrong": it.wrong,
             "image_url": f"/img/{it.nid}.jpg?q={quote(query, safe='')}",
             "image_fault": shop.faults.image_fault(query, it.index)}
            for it in found
        ]}

    @app.post("/_test/reset")
    async def reset(sessions: bool = True) -> dict:
        """Clears faults and counters, and QR tokens and sessions unless ``sessions=false``."""
        shop.reset(sessions=sessions)
        return {"reset": True, "sessions": sessions}
