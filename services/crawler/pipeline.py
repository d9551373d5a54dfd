"""One crawl request from its message to its published result: validation, the search on the
site, parallel downloads with spare results replacing failures, and the result pushed once.

Runs in the Celery task's thread with the browser lock held for the search; the downloads run
in a thread pool of their own.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from services.crawler.browser import BrowserSession, is_session_lost
from services.crawler.download import ImageDownloader
from services.crawler.login import LoginStatePublisher, QrLogin
from services.crawler.pictures import PictureFetcher
from services.crawler.results import ResultPublisher
from services.crawler.search import SearchFailed, SiteSearch
from services.crawler.settings import CrawlerSettings
from shared import redis_keys
from shared.messages import CrawlRequest, CrawlResult, MissingImage
from shared.query import normalize_query

log = logging.getLogger(__name__)


@dataclass
class CrawlOutcome:
    images: list[bytes] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    missing: list[MissingImage] = field(default_factory=list)
    # Failures that spare results made up for: logged, not missing.
    replaced: list[MissingImage] = field(default_factory=list)
    pages: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class CrawlPipeline:
    def __init__(self, settings: CrawlerSettings, client: redis.Redis, rank: int,
                 session: BrowserSession, lock: threading.RLock, ready: threading.Event,
                 login: QrLogin, login_state: LoginStatePublisher, search: SiteSearch,
                 downloader: ImageDownloader, pictures: PictureFetcher,
                 results: ResultPublisher):
        self.settings = settings
        self.redis = client
        self.rank = rank
        self.session = session
        self.lock = lock
        self._ready = ready
        self.login = login
        self.login_state = login_state
        self.search = search
        self.downloader = downloader
        self.pictures = pictures
        self.results = results
        self.download_pool = ThreadPoolExecutor(settings.download_concurrency,
                                                thread_name_prefix="download")
        self.queries_since_start = 0

    def close(self) -> None:
        self.download_pool.shutdown(wait=False, cancel_futures=True)

    # ---- one crawl ----------------------------------------------------------------------
    def handle(self, payload: dict) -> dict:
        """Runs one crawl request and pushes its result (once); returns a short summary."""
        try:
            request = CrawlRequest.model_validate(payload)
        except ValidationError as exc:
            reason = f"invalid crawl request: {exc.errors()[0].get('loc')} {exc.errors()[0].get('msg')}"
            meta = payload if isinstance(payload, dict) else {}
            self.results.record_failure({
                "job_id": str(meta.get("job_id", "")), "request_id": str(meta.get("request_id", "")),
                "query": str(meta.get("query", ""))[:200], "url": None, "reason": reason})
            log.error("%s", reason)
            return {"status": "invalid", "reason": reason}
        if self.results.already_done(request.request_id):
            return {"status": "duplicate", "request_id": request.request_id}
        started = time.monotonic()
        normalized = normalize_query(request.query)
        stats_key = redis_keys.crawler_stats(self.rank)
        self.redis.hset(stats_key, mapping={"current": request.request_id, "current_query": request.query[:200],
                                            "last_seen": time.time()})
        try:
            outcome = self._crawl(request, normalized)
        finally:
            self.redis.hdel(stats_key, "current", "current_query")
        return self._publish(request, normalized, outcome, time.monotonic() - started)

    def fail(self, request_payload: dict, reason: str) -> dict:
        """Pushes a ``failed`` result (e.g. when the task ran out of time)."""
        request = CrawlRequest.model_validate(request_payload)
        outcome = CrawlOutcome(missing=[MissingImage(reason=reason)] * request.n_images)
        return self._publish(request, normalize_query(request.query), outcome, 0.0)

    def _publish(self, request: CrawlRequest, normalized: str, outcome: CrawlOutcome,
                 elapsed: float) -> dict:
        got = len(outcome.images)
        status = "ok" if got >= request.n_images else ("partial" if got else "failed")
        result = CrawlResult(
            request_id=request.request_id, job_id=request.job_id, split=request.split,
            query=request.query, normalized_query=normalized, status=status, rank=self.rank,
            elapsed_s=round(elapsed, 3), missing=outcome.missing, image_urls=outcome.urls,
            images=outcome.images,
        )
        pushed = self.results.publish(result, request.reply_stream, pages=outcome.pages,
                                      extra_failures=[(m.url, m.reason) for m in outcome.replaced])
        log.info("query %r: %s, %d/%d images in %.2fs %s%s", normalized, status, got,
                 request.n_images, elapsed, outcome.timings,
                 "" if pushed else " (duplicate, not pushed)")
        return {"status": status, "images": got, "pushed": pushed, "request_id": request.request_id,
                **outcome.timings}

    def _crawl(self, request: CrawlRequest, normalized: str) -> CrawlOutcome:
        n = request.n_images
        if time.time() > request.deadline:
            return CrawlOutcome(missing=[MissingImage(reason="deadline passed before the crawl started")] * n)
        if not normalized:
            return CrawlOutcome(missing=[MissingImage(reason="query is empty after normalisation")] * n)
        if not self._ready.wait(timeout=max(0.0, request.deadline - time.time())):
            return CrawlOutcome(missing=[MissingImage(reason="browser did not start before the deadline")] * n)
        self.queries_since_start += 1
        for attempt in (1, 2):
            with self.lock:
                try:
                    limit = self.settings.browser_max_queries
                    if limit and self.queries_since_start > limit:
                        log.info("fresh browser after %d queries", limit)
                        self.queries_since_start = 1
                        self.session.restart()
                        self.login.restore_cookies()
                    elif self.session.ensure_alive():
                        self.login.restore_cookies()
                    return self._crawl_once(request, normalized)
                except SoftTimeLimitExceeded:
                    raise
                except Exception as exc:
                    if attempt == 1 and is_session_lost(exc):
                        log.warning("browser lost during %r (%s); restarting", normalized, exc)
                        self.session.restart()
                        self.login.restore_cookies()
                        continue
                    log.exception("crawl of %r failed", normalized)
                    reason = f"browser error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    return CrawlOutcome(missing=[MissingImage(reason=reason[:300])] * n)
        raise AssertionError("unreachable")

    def _crawl_once(self, request: CrawlRequest, normalized: str) -> CrawlOutcome:
        n = request.n_images
        pages_before = self.search.pages_loaded
        started = time.monotonic()
        try:
            found = self.search.collect(normalized, n + self.settings.extra_candidates,
                                        request.deadline)
        except SearchFailed as exc:
            return CrawlOutcome(missing=[MissingImage(reason=exc.reason)] * n,
                                pages=self.search.pages_loaded - pages_before)
        if self.login_state.current is None or self.login_state.current.state != "logged_in":
            # Results came back, so the session is logged in (e.g. by the saved cookies).
            self.login.logged_in()
        outcome = CrawlOutcome(pages=self.search.pages_loaded - pages_before)
        searched = time.monotonic()
        self.downloader.use_browser_identity(self.session.all_cookies(), self.session.user_agent())
        referer = self.session.driver.current_url
        self._download(found.urls, n, referer, request.deadline, outcome)
        outcome.timings = {"search_s": round(searched - started, 3),
                           "download_s": round(time.monotonic() - searched, 3)}
        shortfall = n - len(outcome.images) - len(outcome.missing)
        reasons = found.unusable + [found.shortfall or "not enough results"] * max(0, shortfall)
        for reason in reasons[:max(0, shortfall)]:
            outcome.missing.append(MissingImage(reason=reason))
        return outcome

    def _download(self, urls: list[str], n: int, referer: str, deadline: float,
                  outcome: CrawlOutcome) -> None:
        """Downloads the first ``n`` URLs in parallel; each failure starts the next spare URL.
        Images keep the result order. Failures a spare made up for go to ``outcome.replaced``."""
        pending = [(url, self.download_pool.submit(self._fetch_one, url, referer, deadline))
                   for url in urls[:n]]
        spares = list(urls[n:])
        failures: list[MissingImage] = []
        while pending:
            url, future = pending.pop(0)
            image, reason = future.result()
            if image is not None:
                outcome.images.append(image)
                outcome.urls.append(url)
                continue
            failures.append(MissingImage(url=url, reason=reason))
            if spares:
                spare = spares.pop(0)
                pending.append((spare, self.download_pool.submit(self._fetch_one, spare, referer,
                                                                 deadline)))
        missing_slots = n - len(outcome.images)
        outcome.missing = failures[:missing_slots]
        # Beyond the missing slots: failures a spare made up for, or (when the spares ran out)
        # failed spares themselves. Both are logged, neither is a missing image.
        suffix = " (a spare result replaced it)" if missing_slots == 0 else " (spare result)"
        outcome.replaced = [MissingImage(url=f.url, reason=f.reason + suffix)
                            for f in failures[missing_slots:]]

    def _fetch_one(self, url: str, referer: str, deadline: float) -> tuple[bytes | None, str]:
        return self.pictures.fetch(url, referer, deadline)
