"""Everything one crawler process owns, wired together: its rank, browser session, login,
the session keeper (:mod:`services.crawler.keeper`) and the crawl pipeline
(:mod:`services.crawler.pipeline`).

A Celery pool process creates one :class:`CrawlerRuntime`. Tasks and the keeper share the
browser under one lock, so only one of them drives it at a time.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

import redis

from services.crawler import ranks
from services.crawler.browser import BrowserSession
from services.crawler.budget import AccountBudget, account_name
from services.crawler.cookies import CookieStore
from services.crawler.download import ImageDownloader
from services.crawler.keeper import SessionKeeper
from services.crawler.login import LoginStatePublisher, QrLogin
from services.crawler.operator_relay import OperatorRelay
from services.crawler.pictures import PictureFetcher
from services.crawler.pipeline import CrawlPipeline
from services.crawler.politeness import Politeness
from services.crawler.profile import SiteProfile, load_profile
from services.crawler.results import ResultPublisher
from services.crawler.search import SiteSearch
from services.crawler.settings import CrawlerSettings
from shared import redis_keys
from shared.image_validation import ImageRules

log = logging.getLogger(__name__)

# How long a stopping crawler waits for the browser to be free before ending it.
CLOSE_LOCK_WAIT_S = 2.0


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
        self.operator = OperatorRelay(self.redis, self.rank, self.session, self.login_state)
        pace = self.profile.pace
        own_name = f"{self.profile.name}-rank{self.rank}"
        self.budget = AccountBudget(
            self.redis,
            lambda: account_name(self.session.all_cookies(), self.profile.login.account_cookies,
                                 own_name),
            pace.max_pages_per_hour, pace.max_pages_per_day, pace.min_page_gap_s,
            pace.search_cooldown_s)
        self.search = SiteSearch(
            self.session, self.profile, self.politeness, self.login, self.operator, self.budget,
            count=lambda event: self.redis.hincrby(redis_keys.crawler_stats(self.rank), event, 1))
        self.downloader = ImageDownloader(
            timeout_s=settings.download_timeout_s, max_bytes=settings.max_image_bytes,
            attempts=settings.download_attempts, backoff_s=settings.download_backoff_s,
            concurrency=settings.download_concurrency, extra_headers=self.profile.download_headers,
            allow_private_hosts=self.profile.private_image_hosts,
            site_origin=self.profile.base_url,
        )
        self.rules: ImageRules = settings.image_rules()
        self.pictures = PictureFetcher(self.downloader, self.rules, settings.parallel_decodes)
        self.results = ResultPublisher(self.redis, self.rank, settings.done_ttl_s,
                                       settings.failures_maxlen)
        # A previous process of this rank may have died mid-crawl.
        self.redis.hdel(redis_keys.crawler_stats(self.rank), "current", "current_query")
        self._stop = threading.Event()
        self.keeper = SessionKeeper(settings, self.profile, self.redis, self.rank, self.claim_owner,
                                    self.session, self.lock, self.login, self.login_state,
                                    self._stop)
        self.pipeline = CrawlPipeline(settings, self.redis, self.rank, self.session, self.lock,
                                      self.keeper.ready, self.login, self.login_state, self.search,
                                      self.downloader, self.pictures, self.results)
        self.login_state.publish("starting", "browser starting", drop_qr=True)

    # ---- lifecycle ----------------------------------------------------------------------
    def start_keeper(self) -> None:
        self.keeper.start()

    def wait_ready(self, timeout: float) -> bool:
        return self.keeper.ready.wait(timeout)

    def handle(self, payload: dict) -> dict:
        return self.pipeline.handle(payload)

    def fail(self, request_payload: dict, reason: str) -> dict:
        return self.pipeline.fail(request_payload, reason)

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
            self.keeper.join(timeout=CLOSE_LOCK_WAIT_S)
            try:
                self.login_state.publish(
                    self.login_state.current.state if self.login_state.current else "error",
                    "crawler stopped")
            except redis.RedisError:
                pass
            self.session.close()
            self.pipeline.close()
            self.pictures.close()
            self.downloader.close()
            try:
                ranks.release_rank(self.redis, self.rank, self.claim_owner)
            except redis.RedisError:
                pass
        finally:
            self.lock.release()
