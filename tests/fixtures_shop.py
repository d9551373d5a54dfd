"""The demo shop as a real server for tests: ``ShopServer`` and the pytest fixtures.

``ShopServer`` runs ``python -m services.shop`` (uvicorn) as a subprocess on a free loopback
port and drives it through its HTTP test switches::

    server = ShopServer(env={"CNCLIP_SHOP_QR_TOKEN_TTL_S": "3"}).start()
    server.base_url                      # "http://127.0.0.1:PORT"
    server.url("/search", q="红色T恤")   # absolute URL with an encoded query string
    server.set_faults(captcha=2, image_html={"items": [0, 2]})   # see services/shop/faults.py
    server.clear_faults()
    server.tokens()                      # QR tokens, oldest first: [{"token", "payload", "state", ...}]
    server.latest_token()                # newest token (waits for one to appear)
    server.confirm(token)                # the phone's scan (POST /qr/{token}/confirm)
    server.login(client)                 # logs an httpx.Client in over HTTP, returns the cookie
    server.expire_sessions()             # every session ends now
    server.stats()                       # {"counts": {...}, "active_sessions": n, "image_cache": {...}}
    server.items("红色T恤")              # results as the shop will show them, with image faults
    server.reset()                       # faults, tokens, sessions and counters back to the start
    server.reset(sessions=False)         # the same, but logins stay
    server.stop()

Fixtures:
- ``shop_server`` (session scope): one shop for the whole run, default settings.
- ``shop`` (function scope): the same server, reset before each test.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.helpers import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSION_COOKIE = "cnclip_shop_session"


class ShopServer:
    def __init__(self, env: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="shop-", suffix=".log", delete=False)
        # No kept-alive connections: uvicorn closes an idle one after 5 s, and a request sent
        # on it at that moment fails with "Server disconnected".
        self._http = httpx.Client(timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0))

    # ---- lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str, **params: Any) -> str:
        return self.base_url + path + (f"?{urlencode(params)}" if params else "")

    def start(self, timeout: float = 30.0) -> ShopServer:
        env = {**os.environ, "CNCLIP_SHOP_TEST_ENDPOINTS": "true", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.shop", "--host", self.host, "--port", str(self.port)],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"the shop exited with {self.proc.returncode}:\n{tail}")
            try:
                if self._http.get(self.url("/healthz"), timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"the shop did not answer within {timeout}s:\n{tail}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._http.close()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's own output (kept until ``stop``)."""
        path = Path(self._log.name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def __enter__(self) -> ShopServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test switches --------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, self.url(path), **kwargs)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **faults: Any) -> dict:
        """Sets these fault fields (others stay); returns all faults now in force."""
        return self._call("POST", "/_test/faults", json=faults)

    def faults(self) -> dict:
        return self._call("GET", "/_test/faults")

    def clear_faults(self) -> dict:
        return self._call("DELETE", "/_test/faults")

    def tokens(self) -> list[dict]:
        return self._call("GET", "/_test/tokens")["tokens"]

    def latest_token(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            tokens = self.tokens()
            if tokens:
                return tokens[-1]["token"]
            if time.monotonic() > deadline:
                raise TimeoutError("no QR login code was shown")
            time.sleep(0.1)

    def confirm(self, token: str) -> httpx.Response:
        """The phone's scan; the response says whether it was accepted (200/404/410)."""
        return self._http.post(self.url(f"/qr/{token}/confirm"))

    def expire_sessions(self) -> int:
        return self._call("POST", "/_test/sessions/expire")["expired"]

    def stats(self) -> dict:
        return self._call("GET", "/_test/stats")

    def count(self, name: str) -> int:
        return self.stats()["counts"].get(name, 0)

    def items(self, query: str, start: int = 0, count: int = 44) -> dict:
        return self._call("GET", "/_test/items", params={"q": query, "start": start, "count": count})

    def reset(self, sessions: bool = True) -> None:
        """Faults and counters back to the start; QR tokens and logins too unless
        ``sessions=False`` (for a browser that should stay logged in between tests)."""
        self._call("POST", "/_test/reset", params={"sessions": str(sessions).lower()})

    def login(self, client: httpx.Client) -> str:
        """Logs ``client`` (whose base_url is this shop) in the way a browser would, with the
        scan done by ``confirm``; returns the new session cookie's value."""
        if SESSION_COOKIE in client.cookies:
            client.cookies.delete(SESSION_COOKIE)
        page = client.get("/login", follow_redirects=False)
        page.raise_for_status()
        token = re.search(r'data-token="([^"]+)"', page.text).group(1)
        self.confirm(token).raise_for_status()
        done = client.get(f"/qr/{token}/complete", follow_redirects=False)
        assert done.status_code == 302, done.text
        return client.cookies[SESSION_COOKIE]


@pytest.fixture(scope="session")
def shop_server():
    server = ShopServer().start()
    yield server
    server.stop()


@pytest.fixture()
def shop(shop_server):
    shop_server.reset()
    yield shop_server


class Skin:
    """The skin's switches (``/_test/taobao``) of one shop."""

    def __init__(self, shop: ShopServer):
        self.shop = shop

    def set(self, **switches) -> dict:
        response = httpx.post(self.shop.url("/_test/taobao"), json=switches)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        httpx.delete(self.shop.url("/_test/taobao")).raise_for_status()


@pytest.fixture()
def skin(shop):
    skin = Skin(shop)
    skin.reset()
    yield skin
    skin.reset()
