"""The session keeper: one thread per crawler process that starts the browser, checks the
login, refreshes the QR code while nobody scans it, keeps the rank claim alive and heartbeats
the login state.

The browser starts here rather than in the pool process's start-up, so that process starts
within Celery's deadline. The keeper and the crawl pipeline share the browser under one lock;
the keeper only looks at the page while the lock is free.
"""
from __future__ import annotations

import logging
import threading
import time

import redis

from services.crawler import ranks
from services.crawler.browser import BrowserSession
from services.crawler.login import LoginStatePublisher, QrLogin
from services.crawler.profile import SiteProfile
from services.crawler.settings import CrawlerSettings
from shared import redis_keys

log = logging.getLogger(__name__)


class SessionKeeper:
    def __init__(self, settings: CrawlerSettings, profile: SiteProfile, client: redis.Redis,
                 rank: int, claim_owner: str, session: BrowserSession, lock: threading.RLock,
                 login: QrLogin, login_state: LoginStatePublisher, stop: threading.Event):
        self.settings = settings
        self.profile = profile
        self.redis = client
        self.rank = rank
        self.claim_owner = claim_owner
        self.session = session
        self.lock = lock
        self.login = login
        self.login_state = login_state
        self._stop = stop
        # Set once the browser is up: crawls wait for it.
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keep, name="session-keeper", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _keep(self) -> None:
        """Starts the browser, then keeps the login and the rank claim fresh while idle."""
        last_claim = 0.0
        while not self._stop.is_set():
            try:
                if not self.ready.is_set():
                    with self.lock:
                        if self._stop.is_set():  # closed while this thread waited
                            break
                        self._start_session()
                    self.ready.set()
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
