"""QR login of one rank's browser session, and the rank's login state in Redis.

When the site shows its login wall, the QR element is screenshotted as PNG and published with
the rank's state for the control service (which shows it to a person with a phone). The code
is re-taken when the page marks it expired (clicking the page's refresh) or when it is older
than the profile's ``qr_max_age_s``. Once the page moves on, the session's cookies are saved
(see :mod:`services.crawler.cookies`) so the next start needs no scan.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Literal

import redis
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from services.crawler.browser import BrowserSession
from services.crawler.cookies import CookieStore
from services.crawler.profile import SiteProfile
from shared import redis_keys
from shared.messages import LoginState, LoginStateName

log = logging.getLogger(__name__)


class LoginStatePublisher:
    """Writes a rank's LoginState hash and QR PNG, and announces changes on the channel."""

    def __init__(self, client: redis.Redis, rank: int, site: str, site_url: str = ""):
        self.client = client
        self.rank = rank
        self.site = site
        self.site_url = site_url
        self.current: LoginState | None = None

    def publish(
        self,
        state: LoginStateName,
        detail: str = "",
        qr_png: bytes | None = None,
        drop_qr: bool = False,
        qr_lifetime_s: float | None = None,
    ) -> LoginState:
        now = time.time()
        previous = self.current
        since = previous.since if previous is not None and previous.state == state else now
        qr_updated_at = previous.qr_updated_at if previous is not None else None
        qr_expires_at = previous.qr_expires_at if previous is not None else None
        if qr_png is not None:
            qr_updated_at = now
            qr_expires_at = now + qr_lifetime_s if qr_lifetime_s else None
        elif drop_qr:
            qr_updated_at = qr_expires_at = None
        login_state = LoginState(
            rank=self.rank, state=state, updated_at=now, since=since, detail=detail,
            qr_updated_at=qr_updated_at, qr_expires_at=qr_expires_at, site=self.site,
            site_url=self.site_url, host=socket.gethostname(), pid=os.getpid(),
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(redis_keys.crawler_login(self.rank), mapping=login_state.to_hash())
        pipe.sadd(redis_keys.crawler_ranks(), self.rank)
        if qr_png is not None:
            pipe.set(redis_keys.crawler_qr(self.rank), qr_png)
        elif drop_qr:
            pipe.delete(redis_keys.crawler_qr(self.rank))
        pipe.publish(redis_keys.crawler_login_channel(), str(self.rank))
        pipe.execute()
        self.current = login_state
        if previous is None or previous.state != state:
            log.info("rank %d login state: %s %s", self.rank, state, detail)
        return login_state

    def heartbeat(self) -> None:
        """Refreshes ``updated_at`` so readers can tell a live rank from a dead one."""
        if self.current is not None:
            self.current.updated_at = time.time()
            self.client.hset(
                redis_keys.crawler_login(self.rank), "updated_at", json.dumps(self.current.updated_at)
            )


class LoginRequired(Exception):
    """The site wants a login and nobody scanned the code in time."""


class QrLogin:
    """Drives the login wall of a profile. All methods run with the session lock held."""

    def __init__(
        self,
        session: BrowserSession,
        profile: SiteProfile,
        publisher: LoginStatePublisher,
        cookies: CookieStore,
        poll_s: float = 1.0,
    ):
        self.session = session
        self.profile = profile
        self.publisher = publisher
        self.cookies = cookies
        self.poll_s = poll_s
        self._qr_source: str | None = None
        self._qr_taken_at = 0.0
        self._cookies_loaded_mtime: float | None = None

    # ---- page classification ------------------------------------------------------------
    def on_login_wall(self) -> bool:
        login = self.profile.login
        driver = self.session.driver
        url = driver.current_url
        if any(marker in url for marker in login.wall_url_contains):
            return True
        if login.wall_selector:
            return bool(driver.find_elements(By.CSS_SELECTOR, login.wall_selector))
        return False

    def _switch_to_login_frame(self) -> None:
        frame = self.profile.login.frame
        if frame:
            elements = self.session.driver.find_elements(By.CSS_SELECTOR, frame)
            if elements:
                self.session.driver.switch_to.frame(elements[0])

    # ---- cookies ------------------------------------------------------------------------
    def restore_cookies(self) -> bool:
        """Loads saved cookies into the browser; True when there were any."""
        saved = self.cookies.load()
        self._cookies_loaded_mtime = self.cookies.mtime()
        if not saved:
            return False
        self.session.set_cookies(saved, self.profile.expand(self.profile.search.home_url))
        log.info("restored %d cookies from %s", len(saved), self.cookies.path)
        return True

    def newer_cookies_available(self) -> bool:
        """Another rank sharing the cookie file logged in since we last loaded it."""
        mtime = self.cookies.mtime()
        return mtime is not None and mtime != self._cookies_loaded_mtime

    def save_cookies(self) -> None:
        self.cookies.save(self.session.all_cookies())
        self._cookies_loaded_mtime = self.cookies.mtime()

    # ---- the QR code --------------------------------------------------------------------
    def _qr_element(self):
        login = self.profile.login
        driver = self.session.driver
        if login.show_qr_click and not driver.find_elements(By.CSS_SELECTOR, login.qr_element):
            for element in driver.find_elements(By.CSS_SELECTOR, login.show_qr_click):
                try:
                    element.click()
                    break
                except WebDriverException:
                    continue
        found = driver.find_elements(By.CSS_SELECTOR, login.qr_element)
        return found[0] if found else None

    def _qr_is_expired(self) -> bool:
        login = self.profile.login
        driver = self.session.driver
        if login.expired_selector:
            for element in driver.find_elements(By.CSS_SELECTOR, login.expired_selector):
                if element.is_displayed():
                    return True
        if login.status and login.expired_text:
            for element in driver.find_elements(By.CSS_SELECTOR, login.status):
                text = (element.text or "") + " " + (element.get_attribute("data-state") or "")
                if any(marker in text for marker in login.expired_text):
                    return True
        return False

    def _wait_qr_rendered(self, element, timeout: float = 5.0) -> None:
        """An <img> QR must have finished loading before its screenshot means anything."""
        deadline = time.monotonic() + timeout
        script = ("const e = arguments[0]; const img = e.tagName === 'IMG' ? e : e.querySelector('img');"
                  "return !img || (img.complete && img.naturalWidth > 0);")
        while time.monotonic() < deadline:
            if self.session.driver.execute_script(script, element):
                return
            time.sleep(0.05)

    def publish_qr(self) -> bool:
        """Screenshot the QR element and publish it as ``waiting_for_scan``."""
        self._switch_to_login_frame()
        try:
            element = self._qr_element()
            if element is None:
                self.publisher.publish("error", "login page shows no QR code (check the profile's "
                                       "login.qr_element selector)", drop_qr=True)
                return False
            self._wait_qr_rendered(element)
            self.session.driver.execute_script(
                "arguments[0].scrollIntoView({block: 'center'});", element)
            png = element.screenshot_as_png
            self._qr_source = element.get_attribute("outerHTML")
            self._qr_taken_at = time.monotonic()
        finally:
            if self.profile.login.frame:
                self.session.driver.switch_to.default_content()
        # The crawler takes a new code at the latest after qr_max_age_s: the page counts down to it.
        self.publisher.publish("waiting_for_scan", "scan the QR code with the shop's app", qr_png=png,
                               qr_lifetime_s=self.profile.login.qr_max_age_s)
        return True

    def _refresh_qr(self) -> None:
        login = self.profile.login
        driver = self.session.driver
        self.publisher.publish("expired", "QR code expired; taking a new one")
        clicked = False
        if login.refresh:
            for element in driver.find_elements(By.CSS_SELECTOR, login.refresh):
                try:
                    if element.is_displayed():
                        element.click()
                        clicked = True
                        break
                except WebDriverException:
                    continue
        if not clicked:
            driver.refresh()
        time.sleep(0.2)
        self.publish_qr()

    # ---- the loop -----------------------------------------------------------------------
    def poll(self) -> LoginStateName:
        """One look at the login page: notices success, expiry or a changed code."""
        if not self.on_login_wall():
            self.logged_in()
            return "logged_in"
        if self._qr_is_expired():
            self._refresh_qr()
            return "waiting_for_scan"
        element = None
        try:
            self._switch_to_login_frame()
            element = self._qr_element()
            source = element.get_attribute("outerHTML") if element is not None else None
        finally:
            if self.profile.login.frame:
                self.session.driver.switch_to.default_content()
        too_old = time.monotonic() - self._qr_taken_at > self.profile.login.qr_max_age_s
        if too_old:
            self.session.driver.refresh()
            self.publish_qr()
        elif element is None or source != self._qr_source:
            self.publish_qr()
        return "waiting_for_scan"

    def logged_in(self) -> None:
        self.save_cookies()
        self.publisher.publish("logged_in", "", drop_qr=True)
        self._qr_source = None

    def wait(
        self, deadline: float, should_stop: Callable[[], bool] = lambda: False
    ) -> Literal["logged_in", "cookies_restored", "timeout"]:
        """Shows the QR and waits (until the unix time ``deadline``) for someone to scan it.
        ``cookies_restored``: another rank sharing the login logged in; reload the page."""
        if self.publisher.current is None or self.publisher.current.state != "waiting_for_scan" \
                or self._qr_source is None:
            self.publish_qr()
        while time.time() < deadline and not should_stop():
            if self.poll() == "logged_in":
                return "logged_in"
            if self.newer_cookies_available() and self.restore_cookies():
                return "cookies_restored"
            time.sleep(self.poll_s)
        return "timeout"
