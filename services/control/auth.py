"""Authentication: one shared token guards every route but ``/healthz``.

The API takes it as ``Authorization: Bearer <token>`` (or HTTP basic with the token as
password, for curl -u); pages get a session cookie from a sign-in form. The cookie holds an
HMAC of the token, not the token, and is HttpOnly + SameSite=Strict so other sites can neither
read it nor make the browser send it. SameSite does not separate ports of one host (they are
the same *site*), so a state-changing request that carries only the cookie must also come from
this origin (Origin, else Referer, names this host). This is plain ASGI middleware so that static
files, the OpenAPI docs and streaming responses are covered too.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from html import escape
from typing import Any
from urllib.parse import urlsplit

from services.control.settings import ControlSettings, is_loopback

log = logging.getLogger(__name__)
COOKIE = "cnclip_session"
SIGN_IN_PATH = "/auth/session"
SIGN_IN_STYLE = "/static/sign-in.css"
# The sign-in page's own style sheet is open so the page renders before anyone signs in.
OPEN_PATHS = frozenset({"/healthz", SIGN_IN_STYLE})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A token anyone could guess in an afternoon must not guard a service others can reach.
MIN_TOKEN_CHARS = 16


class InsecureBindError(RuntimeError):
    pass


def resolve_token(settings: ControlSettings) -> str:
    if settings.token is not None and settings.token.get_secret_value():
        token = settings.token.get_secret_value()
        if len(token) < MIN_TOKEN_CHARS and not is_loopback(settings.host):
            raise InsecureBindError(
                f"refusing to listen on {settings.host} with a {len(token)}-character token: "
                f"use at least {MIN_TOKEN_CHARS} random characters (openssl rand -hex 24)")
        return token
    if not is_loopback(settings.host):
        raise InsecureBindError(
            f"refusing to listen on {settings.host}: set CNCLIP_CONTROL_TOKEN for any "
            "non-loopback address (QR codes are keys to a shopping account)")
    token = secrets.token_urlsafe(24)
    if settings.token_file:
        settings.token_file.parent.mkdir(parents=True, exist_ok=True)
        settings.token_file.touch(mode=0o600)
        settings.token_file.write_text(token)
        log.warning("no CNCLIP_CONTROL_TOKEN set; made one up and wrote it to %s", settings.token_file)
    else:
        log.warning("no CNCLIP_CONTROL_TOKEN set; this run's token is %s", token)
    return token


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"cnclip-control-session-v1", hashlib.sha256).hexdigest()


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def request_credential(headers: dict[str, str], token: str) -> str | None:
    """Which valid credential the request carries: ``"header"`` (bearer or basic, which a
    browser never adds on its own), ``"cookie"`` (the page session) or None."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return "header"
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            password = ""
        if password and hmac.compare_digest(password.encode(), token.encode()):
            return "header"
    cookie = headers.get("cookie", "")
    expected = session_value(token)
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and hmac.compare_digest(value.encode(), expected.encode()):
            return "cookie"
    return None


def same_origin(headers: dict[str, str]) -> bool:
    """The request was sent by a page of this service: its Origin (or, without one, its
    Referer) names the host the request was sent to, port included."""
    host = headers.get("host", "").lower()
    source = headers.get("origin") or headers.get("referer") or ""
    if not host or not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host


def sign_in_page(next_path: str = "/status", error: str = "") -> str:
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Sign in - Online-CNCLIP</title><meta name="viewport" content="width=device-width">
<link rel="stylesheet" href="{SIGN_IN_STYLE}"></head><body class="sign-in">
<form method="post" action="{SIGN_IN_PATH}" id="sign-in"><h1>Online-CNCLIP</h1>{message}
<label for="token">Access token</label><input type="password" id="token" name="token" autofocus required>
<input type="hidden" name="next" value="{escape(next_path)}"><button type="submit">Sign in</button>
</form></body></html>"""


def credential_presented(headers: dict[str, str]) -> bool:
    """Whether the request offers a token at all (right or wrong): only those count as tries."""
    if headers.get("authorization", "").strip():
        return True
    return any(part.strip().partition("=")[0] == COOKIE for part in headers.get("cookie", "").split(";"))


class AuthMiddleware:
    """``throttle`` is the sign-in form's limiter: a wrong token counts as a failed try however
    it is presented (bearer, basic, cookie), and a client over the limit gets 429 for every
    request that presents one until its window has passed (a right token too: otherwise the
    answer would still tell a right guess from a wrong one)."""

    def __init__(self, app, token: str, throttle=None):
        self.app = app
        self.token = token
        self.throttle = throttle

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        if path == SIGN_IN_PATH and scope.get("method") == "POST":
            # Another site must not sign a browser in either (it could then drive the pages).
            if (headers.get("origin") or headers.get("referer")) and not same_origin(headers):
                return await _send_json(send, 403, "cross-site sign-in refused")
            return await self.app(scope, receive, send)
        presented = self.throttle is not None and credential_presented(headers)
        client = (scope.get("client") or ("unknown",))[0]
        if presented:
            wait = self.throttle.retry_after(client)
            if wait > 0:
                return await _send_json(send, 429, "too many wrong tokens from this address; try again later",
                                        retry_after=int(wait) + 1)
        credential = request_credential(headers, self.token)
        if credential is None and presented:
            self.throttle.failed(client)
        if credential == "cookie" and scope.get("method", "GET") not in SAFE_METHODS \
                and not same_origin(headers):
            return await _send_json(send, 403, "cross-site request refused: a request that changes "
                                               "state with the page cookie must come from this origin")
        if credential is not None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        wants_html = "text/html" in headers.get("accept", "") and scope.get("method") == "GET"
        if wants_html:
            query = scope.get("query_string", b"").decode("latin-1")
            body = sign_in_page(path + (f"?{query}" if query else "")).encode()
            content_type = b"text/html; charset=utf-8"
        else:
            body = json.dumps({"detail": "authentication required: Authorization: Bearer <token>"}).encode()
            content_type = b"application/json"
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="cnclip"'), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})


async def _send_json(send, status: int, detail: str, retry_after: int | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), *extra]})
    await send({"type": "http.response.body", "body": body})
