"""QR login of one rank's browser session, and the rank's login state in Redis.

When the site shows its login wall, the QR element is screenshotted as PNG and published with
the rank's state for the control service (which shows it to a person with a phone). The code
is re-taken when the page marks it expired (clicking the page's refresh) or when it is older
than the profile's ``qr_max_age_s``. Once the page moves on, the session's cookies are saved
(see :mod:`services.crawler.cookies`) so the next start needs no scan.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import redis
from PIL import Image
from selenium.common.exceptions import (
    NoSuchElementException,
    NoSuchFrameException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By

from services.crawler.browser import BrowserSession
from services.crawler.cookies import CookieStore
from services.crawler.profile import SiteProfile
from shared import redis_keys
from shared.messages import LoginState, LoginStateName

# What Chromium answers when an element found a moment ago left the page (a navigation or a
# redraw in between): the same situation as a stale element, reported in other words.
_MOVED_ON = ("does not belong to the document", "stale element", "No node with given id")


def page_moved_on(exc: WebDriverException) -> bool:
    return any(marker in (exc.msg or "") for marker in _MOVED_ON)


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


# Visible: laid out, not hidden by style. Login pages carry hidden elements of other views.
_VISIBLE_JS = """
const el = arguments[0];
if (!el.getClientRects().length) return false;
const style = getComputedStyle(el);
return style.visibility !== 'hidden' && style.display !== 'none';
"""

# An <img> QR has finished loading; a <canvas> QR has been drawn on (not all one colour).
_QR_RENDERED_JS = """
const e = arguments[0];
const canvas = e.tagName === 'CANVAS' ? e : e.querySelector('canvas');
if (canvas) {
  if (!canvas.width || !canvas.height) return false;
  try {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 4; i < data.length; i += 4) {
      if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2] || data[i + 3] !== data[3]) return true;
    }
    return false;
  } catch (err) { return true; }  // a tainted canvas cannot be read; trust it
}
const img = e.tagName === 'IMG' ? e : e.querySelector('img');
return !img || (img.complete && img.naturalWidth > 0);
"""


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
        # New codes taken in a row while nobody had /login open.
        self._idle_refreshes = 0
        self._qr_missing_since: float | None = None
        self._cookies_loaded_mtime: float | None = None

    # ---- page classification ------------------------------------------------------------
    def on_login_wall(self) -> bool:
        login = self.profile.login
        driver = self.session.driver
        url = driver.current_url
        if any(marker in url for marker in login.wall_url_contains):
            return True
        if login.wall_selector:
            return any(self._visible(e) for e in driver.find_elements(By.CSS_SELECTOR, login.wall_selector))
        return False

    def has_login_cookie(self) -> bool:
        """One of the profile's logged-in cookies is set (True when the profile names none)."""
        names = set(self.profile.login.logged_in_cookies)
        if not names:
            return True
        return any(c.get("name") in names and c.get("value") for c in self.session.all_cookies())

    def _visible(self, element) -> bool:
        try:
            return bool(self.session.driver.execute_script(_VISIBLE_JS, element))
        except WebDriverException:
            return False

    @contextmanager
    def _in_login_frame(self) -> Iterator[None]:
        """Inside the login iframe when the page embeds one, else on the page itself."""
        frame = self.profile.login.frame
        driver = self.session.driver
        switched = False
        if frame:
            elements = [e for e in driver.find_elements(By.CSS_SELECTOR, frame) if self._visible(e)]
            if elements:
                driver.switch_to.frame(elements[0])
                switched = True
        try:
            yield
        finally:
            if switched:
                driver.switch_to.default_content()

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
    def _visible_qr(self):
        found = self.session.driver.find_elements(By.CSS_SELECTOR, self.profile.login.qr_element)
        return next((e for e in found if self._visible(e)), None)

    def _qr_element(self, wait_s: float = 0.0):
        """The visible QR element; clicks the switch to the QR view when it is not shown.
        ``wait_s``: how long a view switched to may take to show the code."""
        login = self.profile.login
        driver = self.session.driver
        element = self._visible_qr()
        if element is None and login.show_qr_click:
            for switch in driver.find_elements(By.CSS_SELECTOR, login.show_qr_click):
                if not self._visible(switch):
                    continue
                try:
                    switch.click()
                    break
                except WebDriverException:
                    continue
        deadline = time.monotonic() + wait_s
        while element is None:
            element = self._visible_qr()
            if element is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return element

    def _qr_is_expired(self) -> bool:
        login = self.profile.login
        driver = self.session.driver
        with self._in_login_frame():
            if login.expired_selector:
                for element in driver.find_elements(By.CSS_SELECTOR, login.expired_selector):
                    if element.is_displayed():
                        return True
            if login.status and login.expired_text:
                for element in driver.find_elements(By.CSS_SELECTOR, login.status):
                    if not element.is_displayed():
                        continue
                    text = (element.text or "") + " " + (element.get_attribute("data-state") or "")
                    if any(marker in text for marker in login.expired_text):
                        return True
        return False

    def _wait_qr_rendered(self, element) -> None:
        """A QR image must have loaded (a canvas been drawn on) before its screenshot means
        anything."""
        deadline = time.monotonic() + self.profile.login.qr_render_timeout_s
        while time.monotonic() < deadline:
            if self.session.driver.execute_script(_QR_RENDERED_JS, element):
                return
            time.sleep(0.05)
        log.warning("the QR code was not drawn within %.1fs", self.profile.login.qr_render_timeout_s)

    def _canvas_png(self, element) -> bytes | None:
        """A canvas QR's own pixels, on white with a margin: exact even inside an iframe, where
        element screenshots can be cut off. None for an <img> or an unreadable canvas."""
        data_url = self.session.driver.execute_script(
            "const e = arguments[0]; const c = e.tagName === 'CANVAS' ? e : e.querySelector('canvas');"
            "try { return c ? c.toDataURL('image/png') : null; } catch (err) { return null; }", element)
        if not data_url or not str(data_url).startswith("data:image/png;base64,"):
            return None
        drawn = Image.open(io.BytesIO(base64.b64decode(str(data_url).split(",", 1)[1]))).convert("RGBA")
        margin = max(8, drawn.width // 10)
        page = Image.new("RGB", (drawn.width + 2 * margin, drawn.height + 2 * margin), "white")
        page.paste(drawn, (margin, margin), drawn)
        out = io.BytesIO()
        page.save(out, "PNG")
        return out.getvalue()

    def _still_on_login_wall(self) -> bool:
        driver = self.session.driver
        driver.switch_to.default_content()
        return self.on_login_wall()

    def _qr_fingerprint(self, element) -> str:
        # A canvas keeps its markup when redrawn with a new code: compare its pixels too.
        return str(self.session.driver.execute_script(
            "const e = arguments[0]; const c = e.tagName === 'CANVAS' ? e : e.querySelector('canvas');"
            "let pixels = ''; try { pixels = c ? c.toDataURL() : ''; } catch (err) {}"
            "return e.outerHTML + pixels;", element))

    def publish_qr(self) -> bool:
        """Screenshot the QR element and publish it as ``waiting_for_scan``; False when there
        is none to publish (the page moved on meanwhile: the caller looks again)."""
        try:
            return self._publish_qr()
        except (StaleElementReferenceException, NoSuchFrameException, NoSuchElementException) as exc:
            log.debug("login page changed while taking its QR code: %s", type(exc).__name__)
        except WebDriverException as exc:
            if not page_moved_on(exc):
                raise
            log.debug("login page changed while taking its QR code: %s", exc.msg)
        self.session.driver.switch_to.default_content()
        return False

    def _publish_qr(self) -> bool:
        with self._in_login_frame():
            element = self._qr_element(wait_s=self.profile.login.qr_render_timeout_s)
            if element is None and not self._still_on_login_wall():
                return False  # the page moved on (e.g. the login completed) meanwhile
            if element is None:
                self.publisher.publish("error", "login page shows no QR code (check the profile's "
                                       "login.qr_element selector)", drop_qr=True)
                return False
            self._wait_qr_rendered(element)
            self.session.driver.execute_script(
                "arguments[0].scrollIntoView({block: 'center'});", element)
            png = self._canvas_png(element) or element.screenshot_as_png
            self._qr_source = self._qr_fingerprint(element)
            self._qr_taken_at = time.monotonic()
        # The crawler takes a new code at the latest after qr_max_age_s: the page counts down to it.
        self.publisher.publish("waiting_for_scan", "scan the QR code with the shop's app", qr_png=png,
                               qr_lifetime_s=self.profile.login.qr_max_age_s)
        return True

    def _refresh_qr(self) -> None:
        login = self.profile.login
        driver = self.session.driver
        self.publisher.publish("expired", "QR code expired; taking a new one")
        clicked = False
        with self._in_login_frame():
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
        try:
            return self._poll_once()
        except (StaleElementReferenceException, NoSuchFrameException, NoSuchElementException) as exc:
            # The page (or the login frame) moved on between two looks: look again next time.
            log.debug("login page changed while polling: %s", type(exc).__name__)
            self.session.driver.switch_to.default_content()
            return "waiting_for_scan"
        except WebDriverException as exc:
            if not page_moved_on(exc):
                raise
            log.debug("login page changed while polling: %s", exc.msg)
            self.session.driver.switch_to.default_content()
            return "waiting_for_scan"

    def _poll_once(self) -> LoginStateName:
        if not self.on_login_wall():
            if self.has_login_cookie():
                self.logged_in()
                return "logged_in"
            # Off the login page without the login's cookies: a page in between.
            return "waiting_for_scan"
        if self._qr_is_expired():
            if self._may_refresh():
                self._refresh_qr()
            return "waiting_for_scan"
        with self._in_login_frame():
            element = self._qr_element()
            source = self._qr_fingerprint(element) if element is not None else None
        too_old = time.monotonic() - self._qr_taken_at > self.profile.login.qr_max_age_s
        if too_old and not self._may_refresh():
            return "waiting_for_scan"
        if too_old:
            self.session.driver.refresh()
            self.publish_qr()
        elif element is None and self._qr_missing_since is None:
            # Perhaps a page passing by (the login completing): look again next time.
            self._qr_missing_since = time.monotonic()
        elif element is None and time.monotonic() - self._qr_missing_since < 2.0:
            pass
        elif element is None or source != self._qr_source:
            self.publish_qr()
        if element is not None or too_old:
            self._qr_missing_since = None
        return "waiting_for_scan"

    def _may_refresh(self) -> bool:
        """Whether to take a new code now. Always while someone has /login open; unwatched, a
        few times with growing pauses (the k-th after ``qr_max_age_s * (2**k - 1)``), then not
        until someone opens /login: a site sees an idle browser reload its login forever."""
        login = self.profile.login
        if self.publisher.client.exists(redis_keys.crawler_login_watched()):
            self._idle_refreshes = 0
            return True
        if self._idle_refreshes >= login.idle_qr_refreshes:
            current = self.publisher.current
            if current is None or current.state != "expired":
                self.publisher.publish("expired", "the QR code is no longer refreshed while "
                                       "nobody watches: open /login for a new one", drop_qr=True)
            return False
        pause = login.qr_max_age_s * (2 ** self._idle_refreshes - 1)
        if time.monotonic() - self._qr_taken_at < pause:
            return False
        self._idle_refreshes += 1
        return True

    def logged_in(self) -> None:
        self._idle_refreshes = 0
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
