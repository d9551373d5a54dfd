"""Downloads result images with the browser session's cookies and user agent.

httpx streams the body so the size cap holds without reading a 30 MB answer into memory;
tenacity retries what may pass on a second try (timeouts, dropped connections, HTTP 5xx and
429) with exponential backoff and jitter, and nothing else (a 404, an HTML page or an
oversized body will not get better).

Redirects are followed here, hop by hop, so that every target is checked like the first URL:
http(s) only, no internal addresses unless the site profile allows them (addresses.py), and
the Referer carries the page URL (with its search query) only to the page's own host.
"""
from __future__ import annotations

import logging
import time
from typing import Any
import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from services.crawler.addresses import ForbiddenTarget, check_target, referer_for

log = logging.getLogger(__name__)
# One line per image download drowns the crawl log; failures are reported with reasons.
logging.getLogger("httpx").setLevel(logging.WARNING)


class DownloadError(Exception):
    """The image could not be fetched; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TransientDownloadError(DownloadError):
    """Worth another try."""


class ImageDownloader:
    def __init__(
        self,
        *,
        timeout_s: float,
        max_bytes: int,
        attempts: int,
        backoff_s: float,
        concurrency: int,
        extra_headers: dict[str, str] | None = None,
        allow_private_hosts: bool = False,
        site_origin: str | None = None,
        max_redirects: int = 5,
    ):
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.extra_headers = extra_headers or {}
        self.allow_private_hosts = allow_private_hosts
        self.site_origin = site_origin
        self.max_redirects = max_redirects
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            follow_redirects=False,  # each hop is checked by _fetch_once
            limits=httpx.Limits(max_connections=concurrency * 2,
                                max_keepalive_connections=concurrency),
        )

    def close(self) -> None:
        self._client.close()

    def use_browser_identity(self, cookies: list[dict[str, Any]], user_agent: str) -> None:
        """Send what the browser would: its cookies (for every domain) and user agent."""
        jar = httpx.Cookies()
        for cookie in cookies:
            jar.set(cookie["name"], cookie["value"], domain=cookie.get("domain", "").lstrip("."),
                    path=cookie.get("path", "/"))
        self._client.cookies = jar
        self._client.headers["User-Agent"] = user_agent

    def fetch(self, url: str, referer: str | None = None, deadline: float | None = None) -> bytes:
        """The body of ``url``; raises :class:`DownloadError` with the reason. ``referer`` is
        the result page's URL."""
        try:
            check_target(url, self.allow_private_hosts, self.site_origin)
        except ForbiddenTarget as exc:
            raise DownloadError(exc.reason) from exc

        def before_deadline(retry_state) -> bool:
            return deadline is not None and time.time() > deadline

        retrying = Retrying(
            retry=retry_if_exception_type(TransientDownloadError),
            stop=stop_after_attempt(self.attempts) | before_deadline,
            wait=wait_exponential_jitter(multiplier=self.backoff_s, max=10 * max(self.backoff_s, 0.1),
                                         jitter=self.backoff_s / 2),
            reraise=False,
        )
        try:
            return retrying(self._fetch_once, url, referer)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            reason = last.reason if isinstance(last, DownloadError) else str(last)
            tries = exc.last_attempt.attempt_number
            raise DownloadError(f"{reason} (after {tries} attempts)") from last

    def _fetch_once(self, url: str, referer: str | None) -> bytes:
        started = time.monotonic()
        target = url
        for _hop in range(self.max_redirects + 1):
            try:
                check_target(target, self.allow_private_hosts, self.site_origin)
            except ForbiddenTarget as exc:
                raise DownloadError(f"redirect to {target[:80]}: {exc.reason}" if target != url
                                    else exc.reason) from exc
            headers = dict(self.extra_headers)
            sent_referer = referer_for(referer, target)
            if sent_referer:
                headers["Referer"] = sent_referer
            body, location = self._get(target, headers, started)
            if location is None:
                return body
            target = location
        raise DownloadError(f"too many redirects (more than {self.max_redirects})")

    def _get(self, url: str, headers: dict[str, str], started: float) -> tuple[bytes, str | None]:
        """One request: (body, None), or (b"", next URL) for a redirect."""
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.has_redirect_location:
                    return b"", str(response.url.join(response.headers["location"]))
                status = response.status_code
                if status == 429 or status >= 500:
                    raise TransientDownloadError(f"HTTP {status}")
                if status >= 400:
                    raise DownloadError(f"HTTP {status}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise DownloadError(
                        f"too large: Content-Length {declared} > {self.max_bytes} bytes")
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if content_type.startswith("text/") or "html" in content_type or "json" in content_type:
                    raise DownloadError(f"not an image: Content-Type {content_type}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise DownloadError(f"too large: more than {self.max_bytes} bytes")
                    # The client's timeout is per read; a server trickling bytes needs a total.
                    if time.monotonic() - started > self.timeout_s * 2:
                        raise TransientDownloadError(f"download slower than {self.timeout_s * 2:.0f}s")
                return bytes(body), None
        except httpx.TimeoutException as exc:
            raise TransientDownloadError(f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientDownloadError(f"connection failed ({type(exc).__name__}: {exc})") from exc
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            # A malformed Location, an undecodable body...: this picture, not the request.
            raise DownloadError(f"bad answer ({type(exc).__name__}: {exc})"[:300]) from exc
