"""Everything one crawler process owns: its rank, browser session, login and crawl pipeline.

A Celery pool process creates one :class:`CrawlerRuntime`. A keeper thread starts the browser
(so the pool process starts within Celery's start-up deadline), checks the login, refreshes
the QR code while nobody scans it, keeps the rank claim alive and heartbeats the login state.
Tasks and the keeper share the browser under one lock, so only one of them drives it at a time.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from services.crawler import ranks
from services.crawler.browser import BrowserSession, is_session_lost
from services.crawler.cookies import CookieStore
from services.crawler.download import ImageDownloader
from services.crawler.login import LoginStatePublisher, QrLogin
from services.crawler.pictures import PictureFetcher
from services.crawler.politeness import Politeness
from services.crawler.profile import SiteProfile, load_profile
from services.crawler.results import ResultPublisher
from services.crawler.search import SearchFailed, SiteSearch
from services.crawler.settings import CrawlerSettings
from shared import redis_keys
from shared.image_validation import ImageRules
from shared.messages import CrawlRequest, CrawlResult, MissingImage
from shared.query import normalize_query

log = logging.getLogger(__name__)

# How long a stopping crawler waits for the browser to be free before ending it.
CLOSE_LOCK_WAIT_S = 2.0


@dataclass
class CrawlOutcome:
    images: list[bytes] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    missing: list[MissingImage] = field(default_factory=list)
    # Failures that spare results made up for: logged, not missing.
    replaced: list[MissingImage] = field(default_factory=list)
    pages: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class CrawlerRuntime:
    def __init__(self, settings: CrawlerSettings, profile: SiteProfile | None = None):
        self.settings = settings
        self.profile = profile or load_profile(settings.profile, settings.base_url)
        self.redis = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
        # The owner is the worker (the pool's parent), so a replaced pool process keeps its rank.
        self.claim_owner = f"{socket.gethostname()}:{os.getppid()}"
        if settings.rank is not None:
            self.rank = settings.rank
            if not ranks.refresh_claim(self.redis, self.rank, self.claim_owner, settings.rank_claim_ttl_s):
                log.warning("rank %d is also claimed by another worker", self.rank)
        else:
            self.rank = ranks.claim_rank(self.redis, self.claim_owner, settings.max_ranks,
                                         settings.rank_claim_ttl_s)
        log.info("crawler rank %d, profile %s (%s)", self.rank, self.profile.name, self.profile.base_url)

        browser = self.profile.browser
        self.session = BrowserSession(
            settings, block_urls=self.profile.block_urls, hide_automation=browser.hide_automation,
            user_data_dir=(settings.state_dir / "chromium" / f"{self.profile.name}-rank{self.rank}"
                           if browser.persistent_user_data else None))
        self.lock = threading.RLock()
        self.login_state = LoginStatePublisher(self.redis, self.rank, self.profile.name, self.profile.base_url)
        self.cookies = CookieStore.for_rank(settings.state_dir, self.profile.name, self.rank,
                                            settings.share_login)
        self.login = QrLogin(self.session, self.profile, self.login_state, self.cookies,
                             poll_s=settings.login_poll_s)
        politeness = self.profile.politeness
        self.politeness = Politeness(
            settings.min_interval_s if settings.min_interval_s is not None else politeness.min_interval_s,
            settings.jitter_s if settings.jitter_s is not None else politeness.jitter_s,
            self.profile.interstitial.backoff_s, self.profile.interstitial.backoff_factor,
        )
        self.search = SiteSearch(self.session, self.profile, self.politeness, self.login)
        self.downloader = ImageDownloader(
            timeout_s=settings.download_timeout_s, max_bytes=settings.max_image_bytes,
            attempts=settings.download_attempts, backoff_s=settings.download_backoff_s,
            concurrency=settings.download_concurrency, extra_headers=self.profile.download_headers,
            allow_private_hosts=self.profile.private_image_hosts,
            site_origin=self.profile.base_url,
        )
        self.download_pool = ThreadPoolExecutor(settings.download_concurrency,
                                                thread_name_prefix="download")
        self.rules: ImageRules = settings.image_rules()
        self.pictures = PictureFetcher(self.downloader, self.rules, settings.parallel_decodes)
        self.results = ResultPublisher(self.redis, self.rank, settings.done_ttl_s,
                                       settings.failures_maxlen)
        self.queries_since_start = 0
        # A previous process of this rank may have died mid-crawl.
        self.redis.hdel(redis_keys.crawler_stats(self.rank), "current", "current_query")
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._keeper: threading.Thread | None = None
        self.login_state.publish("starting", "browser starting", drop_qr=True)

    # ---- lifecycle ----------------------------------------------------------------------
    def start_keeper(self) -> None:
        self._keeper = threading.Thread(target=self._keep, name="session-keeper", daemon=True)
        self._keeper.start()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        # Whoever holds the lock may be waiting on a page that will never load (the site went
        # away first): waiting for it would outlast a container's stop grace period, so the
        # browser is ended under it, which fails that page load at once.
        if not self.lock.acquire(timeout=CLOSE_LOCK_WAIT_S):
            log.warning("browser busy at shutdown; ending it")
            self.session.kill()
            self.lock.acquire()
        try:
            if self._keeper is not None:
                self._keeper.join(timeout=CLOSE_LOCK_WAIT_S)
            try:
                self.login_state.publish(
                    self.login_state.current.state if self.login_state.current else "error",
                    "crawler stopped")
            except redis.RedisError:
                pass
            self.session.close()
            self.download_pool.shutdown(wait=False, cancel_futures=True)
            self.pictures.close()
            self.downloader.close()
            try:
                ranks.release_rank(self.redis, self.rank, self.claim_owner)
            except redis.RedisError:
                pass
        finally:
            self.lock.release()

    def _keep(self) -> None:
        """Starts the browser, then keeps the login and the rank claim fresh while idle."""
        last_claim = 0.0
        while not self._stop.is_set():
            try:
                if not self._ready.is_set():
                    with self.lock:
                        if self._stop.is_set():  # closed while this thread waited
                            break
                        self._start_session()
                    self._ready.set()
                elif self.lock.acquire(blocking=False):
                    try:
                        self._idle_check()
                    finally:
                        self.lock.release()
                if time.monotonic() - last_claim > self.settings.rank_claim_ttl_s / 3:
                    ranks.refresh_claim(self.redis, self.rank, self.claim_owner,
                                        self.settings.rank_claim_ttl_s)
                    self.login_state.heartbeat()
                    self.redis.hset(redis_keys.crawler_stats(self.rank), "last_seen", time.time())
                    last_claim = time.monotonic()
            except Exception as exc:  # the keeper must survive anything and try again
                log.exception("session keeper: %s", exc)
                try:
                    self.login_state.publish("error", f"browser session: {exc}"[:300])
                except redis.RedisError:
                    pass
                self._stop.wait(2.0)
            self._stop.wait(self.settings.login_poll_s)

    def _start_session(self) -> None:
        """Browser up, saved cookies in, then one look at a page that needs a login."""
        self.session.ensure_alive()
        self.login.restore_cookies()
        self.probe_login()

    def probe_login(self) -> None:
        check_url = self.profile.login.check_url
        if not check_url:
            self.login_state.publish("logged_in", "site needs no login check", drop_qr=True)
            return
        self.session.driver.get(self.profile.expand(check_url))
        if self.login.on_login_wall():
            self.login.publish_qr()
        else:
            self.login.logged_in()

    def _idle_check(self) -> None:
        if self.session.ensure_alive():
            self.login.restore_cookies()
            self.probe_login()
            return
        current = self.login_state.current
        if current is not None and current.state in ("waiting_for_scan", "expired"):
            if self.settings.share_login and self.login.newer_cookies_available():
                self.login.restore_cookies()
                self.probe_login()
            else:
                self.login.poll()

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
