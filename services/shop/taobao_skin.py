"""A second skin of the demo shop that behaves like Taobao does today (2024-2026), for testing
the ``taobao`` site profile end to end. The default skin stays what the demo uses.

Each Taobao host is served under a path named after it, so the profile runs unchanged with
``CNCLIP_CRAWLER_BASE_URL`` pointing at the shop (see ``hosts`` in the profile):

- ``/www.taobao.com/``: home page, search box whose form opens the results in a new tab.
- ``/s.taobao.com/search?q=``: a shell; the cards come from ``/s.taobao.com/api/items`` after
  the document is complete, in the "Adapt" layout with class suffixes that change at every
  start of the shop. A ``page=N`` in the URL is ignored (page 1, as the real site rewrites
  it); paging is by ``button.next-pagination-item.next-next``.
- Pictures: protocol-relative thumbnails ``//HOST/g-search1.alicdn.com/img/bao/uploaded/i4/
  <query key>/<nid>.jpg_360x360q90.jpg_.webp`` (``_.avif`` for every other item); the URL
  cut after ``.jpg`` is the original JPEG.
- ``/login.taobao.com/member/login.jhtml``: password view first (with the hidden
  ``#nocaptcha-password.nc-container``), QR view as a canvas drawn ~0.8 s after it is shown;
  variants: QR first, or the login as an iframe on the search page; ``quick=1`` shows the
  one-click "快速进入" re-login. The scan is the shop's ``POST /qr/{token}/confirm``.
- The home page draws its search box after the document loaded; the box is controlled by
  the page's script, which keeps only what trusted input typed: a value set by script is
  ignored and the form searches the placeholder hot word instead. Cards render their ``<img>``
  only once scrolled into view.
- Risk control, counted per account: past ``busy_cap`` result pages in ``cap_window_s`` the
  cards wait behind a frequency dialog ("操作太频繁"), closed by its close control; past
  ``page_cap`` (or on demand, or after a search that did not come from the site's own pages:
  a direct search URL) the session meets the slider ``#nc_1_n1z``, in one of the
  ``challenge`` forms: the baxia dialog (an iframe of ``/_____tmd_____/punish``), the punish
  page at the top level, the punish page answered in place of the results (titled 验证码拦截),
  or in place and with its knob drawn seconds later. The slider passes only on a drag of
  trusted pointer events along its track; nothing else lifts it.

Test switches: ``GET|POST|DELETE /_test/taobao`` (see :class:`SkinSwitches`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import re
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import segno
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.shop.sessions import qr_payload

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates") / "taobao"))
NO_STORE = {"Cache-Control": "no-store"}
PAGE_SIZE = 48
IMAGE_PREFIX = "/g-search1.alicdn.com/img/bao/uploaded/i4"
_PICTURE_NAME = re.compile(r"^(\d+)\.jpg(?:_(\d+)x(\d+)q(\d+)\.jpg_\.(webp|avif))?$")
# Cookies a guest gets too, and those only a login sets.
GUEST_COOKIES = ("cookie2", "_tb_token_")


class SkinSwitches(BaseModel):
    """How the skin behaves; tests change it through ``/_test/taobao``. Counted switches take
    the next N result pages (or searches); -1: every one until cleared."""

    model_config = ConfigDict(extra="forbid")
    login_variant: Literal["password_first", "qr_first", "iframe"] = "password_first"
    page_cap: int = Field(20, ge=0, description="result pages per account in cap_window_s before the slider (0: none)")
    busy_cap: int = Field(0, ge=0, description="result pages per account in cap_window_s before the frequency dialog (0: none)")
    cap_window_s: float = Field(7200.0, gt=0)
    challenge: Literal["dialog", "page", "inline", "unrendered"] = Field(
        "dialog", description="how the slider shows: baxia dialog, punish page, punish page in place of the results (titled 验证码拦截), in place with a late knob")
    busy_text: str = Field("访问太频繁", description="what the frequency dialog says")
    busy_close: Literal["x", "button"] = Field("x", description="the dialog's close control: its × or a 关闭 button")
    direct_url_risk: bool = Field(True, description="a search that did not come from the site's pages meets the slider")
    box_delay_ms: int = Field(400, ge=0, le=20000, description="the home page draws its search box this long after loading")
    card_delay_ms: int = Field(600, ge=0, le=20000, description="cards are fetched this long after the load event")
    qr_draw_delay_ms: int = Field(800, ge=0, le=20000)
    busy_dialog: int = Field(0, ge=-1, description="next N result pages behind a closable 访问太频繁 dialog")
    punish: int = Field(0, ge=-1, description="next N result pages show the slider")
    soft_reauth: int = Field(0, ge=-1, description="next N searches ask for the one-click re-login")
    empty_results: int = Field(0, ge=-1, description="next N result pages find nothing")
    detect_webdriver: bool = Field(False, description="a browser with navigator.webdriver set gets the slider")


class SkinState:
    """Switches, per-session page counts and the sessions the slider blocks (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.switches = SkinSwitches()
        self._pages: dict[str, deque[float]] = {}
        self._blocked: set[str] = set()
        # Generated class names drift: a new suffix at every start.
        self.suffix = secrets.token_hex(4)

    def update(self, changes: dict[str, Any]) -> SkinSwitches:
        with self._lock:
            self.switches = SkinSwitches.model_validate({**self.switches.model_dump(), **changes})
            return self.switches.model_copy()

    def current(self) -> SkinSwitches:
        with self._lock:
            return self.switches.model_copy()

    def reset(self) -> None:
        with self._lock:
            self.switches = SkinSwitches()
            self._pages.clear()
            self._blocked.clear()

    def take(self, name: str) -> bool:
        with self._lock:
            left = getattr(self.switches, name)
            if left == 0:
                return False
            if left > 0:
                setattr(self.switches, name, left - 1)
            return True

    def count_page(self, session_id: str, account: str, now: float) -> Literal["ok", "busy", "slider"]:
        """Counts one result page of the account: 'slider' past page_cap (the session is
        then blocked until the slider is passed), 'busy' past busy_cap (the frequency dialog)."""
        with self._lock:
            if session_id in self._blocked:
                return "slider"
            cap, window = self.switches.page_cap, self.switches.cap_window_s
            pages = self._pages.setdefault(account, deque())
            while pages and pages[0] <= now - window:
                pages.popleft()
            if cap and len(pages) >= cap:
                self._blocked.add(session_id)
                return "slider"
            pages.append(now)
            busy = self.switches.busy_cap
            return "busy" if busy and len(pages) > busy else "ok"

    def block(self, session_id: str) -> None:
        with self._lock:
            self._blocked.add(session_id)

    def blocked(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._blocked

    def solve(self, session_id: str, account: str) -> bool:
        with self._lock:
            was = session_id in self._blocked
            self._blocked.discard(session_id)
            self._pages.pop(account, None)
            return was


class SliderTrace(BaseModel):
    """What the slider page reports of a drag: only trusted pointer events count, and they
    must run along the track to its end, over time, as a hand moves."""

    model_config = ConfigDict(extra="forbid")
    trusted_moves: int = Field(ge=0)
    untrusted: int = Field(ge=0)
    off_track: int = Field(ge=0)
    duration_ms: float = Field(ge=0)
    reached_end: bool

    def passes(self) -> bool:
        return (self.untrusted == 0 and self.off_track == 0 and self.trusted_moves >= 5
                and self.duration_ms >= 100 and self.reached_end)


def query_key(query: str) -> str:
    """The query as a path segment of the picture URL (URL-safe base64, no dots)."""
    return base64.urlsafe_b64encode(query.encode("utf-8")).decode("ascii").rstrip("=")


def query_of_key(key: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def qr_matrix(payload: str) -> list[str]:
    """The QR code's modules as rows of '0'/'1', for the login page to draw on its canvas."""
    code = segno.make(payload, error="m", micro=False)
    return ["".join("1" if cell else "0" for cell in row) for row in code.matrix]


def add_taobao_skin(app: FastAPI, shop: Any) -> None:
    """Registers the skin's routes on the shop's app (``shop``: the shop's state object)."""
    settings = shop.settings
    state = SkinState()
    app.state.taobao_skin = state

    def classes() -> dict[str, str]:
        return {name: f"{name}--{state.suffix}" for name in (
            "doubleCardWrapperAdapt", "cardContainer", "mainPicAdaptWrapper", "mainPic", "title",
            "priceInt", "shopName", "emptyPage", "pageContent")}

    def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        session = shop.session_of(request)
        context.update(session=session, cls=classes(), switches=state.current())
        response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code,
                                              headers=NO_STORE)
        if session is None:
            give_guest_cookies(request, response)
        return response

    def give_guest_cookies(request: Request, response: Response) -> None:
        for name in GUEST_COOKIES:
            if name not in request.cookies:
                response.set_cookie(name, secrets.token_hex(8), path="/")

    def login_url(target: str, **extra: str) -> str:
        return "/login.taobao.com/member/login.jhtml?" + urlencode({"redirectURL": target, **extra})

    def safe_target(target: str | None) -> str:
        if not target or not target.startswith("/") or target.startswith("//") or target.startswith("/\\"):
            return "/www.taobao.com/"
        return target

    def original_path(request: Request) -> str:
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")

    async def page_delay() -> None:
        delay = shop.faults.current().page_delay_s
        if delay:
            await asyncio.sleep(delay)

    # ---- pages ----------------------------------------------------------------------------
    def punish_url(target: str) -> str:
        return "/s.taobao.com/_____tmd_____/punish?" + urlencode(
            {"x5secdata": secrets.token_hex(6), "x5step": "1", "redirect": target})

    def from_the_site(request: Request) -> bool:
        """The request came from one of the site's own pages (its box, its paging, the way
        back from its login)."""
        referer = request.headers.get("referer", "")
        return any(f"/{host}/" in referer
                   for host in ("www.taobao.com", "s.taobao.com", "login.taobao.com"))

    @app.get("/www.taobao.com/", response_class=HTMLResponse)
    async def tb_home(request: Request) -> HTMLResponse:
        shop.stats.add("tb_home")
        await page_delay()
        return render(request, "home.html", query="", hot_word=shop.catalog.clean("红色条纹T恤"))

    @app.get("/s.taobao.com/search", response_class=HTMLResponse)
    async def tb_search(request: Request, q: str = "") -> Response:
        shop.stats.add("tb_search")
        await page_delay()
        session = shop.session_of(request)
        query = shop.catalog.clean(q)
        if session is None:
            shop.stats.add("tb_search_login")
            if state.current().login_variant == "iframe":
                return render(request, "search.html", query=query,
                              login_frame=login_url(original_path(request), style="mini"))
            return RedirectResponse(login_url(original_path(request)), status_code=302)
        if state.take("soft_reauth"):
            shop.stats.add("tb_search_soft_reauth")
            return RedirectResponse(login_url(original_path(request), quick="1"), status_code=302)
        shop.stats.add("tb_search_query:" + query)
        switches = state.current()
        if switches.direct_url_risk and not from_the_site(request):
            # Typed into the address bar (or a script's URL): a risk signal.
            shop.stats.add("tb_direct_search")
            state.block(session.session_id)
        if state.blocked(session.session_id) and switches.challenge != "dialog":
            shop.stats.add("tb_punish")
            if switches.challenge == "page":
                return RedirectResponse(punish_url(original_path(request)), status_code=302)
            return render(request, "punish.html", target=original_path(request),
                          title="验证码拦截" if switches.challenge == "inline" else "淘宝网",
                          knob_delay_ms=3000 if switches.challenge == "unrendered" else 0)
        return render(request, "search.html", query=query, login_frame=None)

    @app.get("/s.taobao.com/api/items")
    async def tb_items(request: Request, q: str = "", page: int = Query(1, ge=1), wd: int = 0) -> JSONResponse:
        """The cards of one result page, as the search page's script fetches them."""
        session = shop.session_of(request)
        if session is None:
            return JSONResponse({"login": login_url("/s.taobao.com/search?" + urlencode({"q": q}))},
                                headers=NO_STORE)
        switches = state.current()
        target = "/s.taobao.com/search?" + urlencode({"q": q, "tab": "all"})
        challenge = {"punish": punish_url(target), "challenge": switches.challenge}
        if state.blocked(session.session_id) or state.take("punish") or \
                (switches.detect_webdriver and wd):
            state.block(session.session_id)
            shop.stats.add("tb_punish")
            return JSONResponse(challenge, headers=NO_STORE)
        counted = state.count_page(session.session_id, session.nick, time.time())
        if counted == "slider":
            shop.stats.add("tb_punish")
            shop.stats.add("tb_page_cap")
            return JSONResponse(challenge, headers=NO_STORE)
        busy = state.take("busy_dialog") or counted == "busy"
        if busy:
            shop.stats.add("tb_busy_dialog")
        query = shop.catalog.clean(q)
        total = 0 if state.take("empty_results") else shop.catalog.total(query)
        pages = max(1, -(-total // PAGE_SIZE))
        start = (page - 1) * PAGE_SIZE
        found = shop.catalog.page(query, start, PAGE_SIZE) if start < total else []
        shop.stats.add("tb_result_page" if found else "tb_empty")
        key = query_key(query)
        items = [{
            "nid": it.nid, "title": it.title, "price": it.price, "shop": it.shop,
            "pic": f"{IMAGE_PREFIX}/{key}/{it.nid}.jpg_360x360q90.jpg_.{'avif' if it.index % 2 else 'webp'}",
        } for it in found]
        return JSONResponse({"items": items, "page": page, "pages": pages,
                             "busy": switches.busy_text if busy else None,
                             "busy_close": switches.busy_close}, headers=NO_STORE)

    @app.get(IMAGE_PREFIX + "/{key}/{name}")
    def tb_picture(key: str, name: str) -> Response:
        match = _PICTURE_NAME.match(name)
        query = query_of_key(key)
        if match is None or query is None:
            raise HTTPException(404, "no such picture")
        index = shop.catalog.index_of(query, match.group(1))
        if index is None:
            raise HTTPException(404, "no such item")
        jpeg = shop.pictures.jpeg(query, index)
        kind = match.group(5)
        if kind is None:
            shop.stats.add("tb_image_original")
            return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
        shop.stats.add(f"tb_image_{kind}")
        picture = Image.open(io.BytesIO(jpeg))
        picture.thumbnail((int(match.group(2)), int(match.group(3))))
        out = io.BytesIO()
        picture.save(out, kind.upper(), quality=int(match.group(4)))
        return Response(out.getvalue(), media_type=f"image/{kind}", headers={"Cache-Control": "public, max-age=86400"})

    # ---- login ----------------------------------------------------------------------------
    @app.get("/login.taobao.com/member/login.jhtml", response_class=HTMLResponse)
    async def tb_login(request: Request, redirectURL: str = "", style: str = "",  # noqa: N803
                       quick: str = "") -> Response:
        shop.stats.add("tb_login")
        await page_delay()
        target = safe_target(redirectURL)
        session = shop.session_of(request)
        if session is not None and not quick:
            return RedirectResponse(target, status_code=302)
        if quick and session is not None:
            return render(request, "quick.html", target=target)
        token = shop.logins.new_token()
        mini = style == "mini"
        variant = state.current().login_variant
        return render(request, "login.html", token=token, target=target, mini=mini,
                      qr_first=mini or variant != "password_first",
                      matrix=qr_matrix(qr_payload(token.token)), poll_ms=settings.qr_poll_ms)

    @app.get("/login.taobao.com/member/quick")
    async def tb_quick(request: Request, redirectURL: str = "") -> RedirectResponse:  # noqa: N803
        shop.stats.add("tb_quick_login")
        target = safe_target(redirectURL)
        if shop.session_of(request) is None:
            return RedirectResponse(login_url(target), status_code=302)
        return RedirectResponse(target, status_code=302)

    @app.get("/login.taobao.com/qr/{token}/complete")
    async def tb_complete(token: str, redirectURL: str = "") -> RedirectResponse:  # noqa: N803
        shop.stats.add("tb_qr_complete")
        target = safe_target(redirectURL)
        session = shop.logins.complete(token)
        if session is None:
            return RedirectResponse(login_url(target), status_code=302)
        response = RedirectResponse(target, status_code=302)
        age = int(settings.session_ttl_s)
        response.set_cookie(settings.session_cookie, session.session_id, max_age=age, path="/",
                            httponly=True, samesite="lax")
        # What only a logged-in visitor gets (the crawler's sign of a login).
        # The account's number: the same at every login of the account.
        number = 10**9 + int.from_bytes(hashlib.sha256(session.nick.encode()).digest()[:4], "big")
        response.set_cookie("unb", str(number), max_age=age, path="/")
        response.set_cookie("_nk_", quote(session.nick), max_age=age, path="/")
        response.set_cookie("tracknick", quote(session.nick), max_age=age, path="/")
        return response

    @app.get("/i.taobao.com/my_itaobao", response_class=HTMLResponse)
    @app.get("/i.taobao.com/my_taobao.htm", response_class=HTMLResponse)
    async def tb_my(request: Request) -> Response:
        shop.stats.add("tb_my")
        if shop.session_of(request) is None:
            return RedirectResponse(login_url(request.url.path), status_code=302)
        return render(request, "my.html", query="")

    # ---- the slider -----------------------------------------------------------------------
    @app.get("/s.taobao.com/_____tmd_____/punish", response_class=HTMLResponse)
    async def tb_punish(request: Request, redirect: str = "") -> HTMLResponse:
        shop.stats.add("tb_punish_page")
        return render(request, "punish.html", target=safe_target(redirect) if redirect else "",
                      title="验证码拦截", knob_delay_ms=0)

    @app.get("/s.taobao.com/_____tmd_____/punish/status")
    async def tb_punish_status(request: Request) -> JSONResponse:
        session = shop.session_of(request)
        blocked = session is not None and state.blocked(session.session_id)
        return JSONResponse({"blocked": blocked}, headers=NO_STORE)

    @app.post("/s.taobao.com/_____tmd_____/punish/solve")
    async def tb_punish_solve(request: Request, trace: SliderTrace) -> JSONResponse:
        """What the slider page sends after a drag; only a hand's drag lifts the block."""
        session = shop.session_of(request)
        if session is None:
            return JSONResponse({"error": "no session"}, status_code=403)
        if not trace.passes():
            shop.stats.add("tb_punish_refused")
            return JSONResponse({"solved": False}, headers=NO_STORE)
        shop.stats.add("tb_punish_solved")
        return JSONResponse({"solved": state.solve(session.session_id, session.nick)})

    if settings.test_endpoints:
        @app.get("/_test/taobao")
        async def tb_switches() -> dict:
            return {**state.current().model_dump(), "class_suffix": state.suffix}

        @app.post("/_test/taobao")
        async def tb_set_switches(changes: dict[str, Any] = Body(...)) -> JSONResponse:
            try:
                return JSONResponse(state.update(changes).model_dump())
            except ValidationError as error:
                return JSONResponse({"detail": error.errors(include_url=False, include_context=False)},
                                    status_code=422)

        @app.delete("/_test/taobao")
        async def tb_reset() -> dict:
            state.reset()
            return state.current().model_dump()
