"""One Chromium session driven through Selenium: headed under Xvfb, headless, or remote.

Local sessions run chromedriver (and through it Chromium) inside the process group of a
:class:`~services.crawler.reaper.Reaper`, which kills the group when this process goes away,
so no Chromium, chromedriver or Xvfb outlives its worker, even after SIGKILL.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import (
    InvalidSessionIdException,
    NoSuchWindowException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service

from services.crawler.reaper import Reaper
from services.crawler.settings import CrawlerSettings

log = logging.getLogger(__name__)

# Chromium as root in a container: no sandbox, /tmp instead of a small /dev/shm, and none of
# the background traffic a fresh profile would start (updates, sync, first-run pages).
BASE_ARGS = (
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--password-store=basic",
    "--lang=zh-CN",
)


def is_session_lost(exc: BaseException) -> bool:
    """True when the browser or its driver is gone (as opposed to a page-level error)."""
    if isinstance(exc, (InvalidSessionIdException, NoSuchWindowException)):
        return True
    if isinstance(exc, WebDriverException):
        text = (exc.msg or str(exc)).lower()
        markers = ("session deleted", "disconnected", "not reachable", "crashed",
                   "no such session", "invalid session id", "target window already closed",
                   "unable to receive message from renderer", "tab crashed")
        return any(marker in text for marker in markers)
    # chromedriver itself gone: the HTTP client cannot connect.
    return isinstance(exc, ConnectionError) or type(exc).__name__ in (
        "MaxRetryError", "ProtocolError", "NewConnectionError", "RemoteDisconnected")


class BrowserSession:
    """Owns the driver; ``driver`` starts the browser on first use, ``restart`` after a crash."""

    def __init__(
        self,
        settings: CrawlerSettings,
        block_urls: list[str] | None = None,
        *,
        hide_automation: bool = False,
        user_data_dir: Path | None = None,
    ):
        """``hide_automation``: no automation switch, no navigator.webdriver.
        ``user_data_dir``: a browser profile kept across starts (else a temporary one)."""
        self.settings = settings
        self.block_urls = list(block_urls or [])
        self.hide_automation = hide_automation
        self.persistent_user_data_dir = user_data_dir
        self._user_agent: str | None = None
        self._driver: webdriver.Remote | None = None
        self._reaper: Reaper | None = None
        self._display: Any = None
        self._user_data_dir: Path | None = None
        self.starts = 0

    # ---- lifecycle ----------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._driver is not None

    @property
    def driver(self) -> webdriver.Remote:
        if self._driver is None:
            self.start()
        assert self._driver is not None
        return self._driver

    def start(self) -> None:
        mode = self.settings.browser_mode
        if mode == "remote":
            self._driver = webdriver.Remote(command_executor=self.settings.remote_url,
                                            options=self._options())
        else:
            if self._reaper is None or not self._reaper.alive():
                self._reaper = Reaper()
            options = self._options()
            env = dict(os.environ)
            if mode == "xvfb":
                env["DISPLAY"] = self._start_display()
            service = Service(
                executable_path=str(self.settings.chromedriver_path),
                env=env,
                popen_kw={"process_group": self._reaper.pgid},
            )
            self._driver = webdriver.Chrome(service=service, options=options)
        if self.block_urls and hasattr(self._driver, "execute_cdp_cmd"):
            # Result pictures are downloaded outside the browser; loading them in the page too
            # would fetch and decode every image twice.
            try:
                self._driver.execute_cdp_cmd("Network.enable", {})
                self._driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": self.block_urls})
            except WebDriverException as exc:  # e.g. a Grid that does not pass CDP through
                log.info("cannot block URLs in this browser: %s", exc.msg)
        self._driver.set_page_load_timeout(self.settings.page_load_timeout_s)
        self._driver.set_script_timeout(max(30.0, self.settings.page_load_timeout_s))
        self.starts += 1
        log.info("browser started (%s, start #%d)", mode, self.starts)

    def _start_display(self) -> str:
        if self._display is None or not self._display.is_alive():
            from pyvirtualdisplay import Display  # only the xvfb mode needs it

            display = Display(
                backend="xvfb",
                size=(self.settings.window_width, self.settings.window_height),
                manage_global_env=False,
                extra_args=["-nolisten", "tcp"],
            )
            display.start()
            assert self._reaper is not None
            self._reaper.announce(display.pid)
            self._display = display
        return self._display.new_display_var

    def _options(self) -> webdriver.ChromeOptions:
        options = webdriver.ChromeOptions()
        # "eager": return at DOMContentLoaded; result pages are read from the DOM, and waiting
        # for every product image to load would only slow each search down.
        options.page_load_strategy = "eager"
        for arg in BASE_ARGS:
            options.add_argument(arg)
        options.add_argument(
            f"--window-size={self.settings.window_width},{self.settings.window_height}"
        )
        if self.settings.browser_mode == "headless":
            options.add_argument("--headless=new")
        if self.hide_automation:
            # ChromeDriver adds --enable-automation (the "controlled by automated software"
            # bar, navigator.webdriver = true); sites read both as a robot.
            options.add_experimental_option("excludeSwitches", ["enable-automation"])
            options.add_argument("--disable-blink-features=AutomationControlled")
        if self.settings.browser_mode != "remote":
            options.binary_location = str(self.settings.chromium_path)
            if self.persistent_user_data_dir is not None:
                self._user_data_dir = self.persistent_user_data_dir
                self._user_data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                # This rank's browser is the only one using the directory (the rank is
                # claimed); locks left by a killed browser would make Chromium refuse it.
                for lock in ("SingletonLock", "SingletonSocket", "SingletonCookie"):
                    (self._user_data_dir / lock).unlink(missing_ok=True)
            else:
                self._user_data_dir = Path(tempfile.mkdtemp(prefix="cnclip-chromium-"))
                if self._reaper is not None:
                    self._reaper.announce_directory(str(self._user_data_dir))
            options.add_argument(f"--user-data-dir={self._user_data_dir}")
        for arg in self.settings.extra_browser_args.split():
            options.add_argument(arg)
        return options

    def alive(self) -> bool:
        if self._driver is None:
            return False
        try:
            self._driver.execute_script("return 1")
            return True
        except Exception as exc:  # any failure to answer means the session is unusable
            log.warning("browser not answering: %s", exc)
            return False

    def ensure_alive(self) -> bool:
        """Restart the browser if it crashed; returns True when it had to restart."""
        if self._driver is not None and self.alive():
            return False
        if self._driver is not None:
            self.restart()
        else:
            self.start()
        return True

    def restart(self) -> None:
        log.warning("restarting the browser")
        self._quit_driver()
        self.start()

    def _quit_driver(self) -> None:
        driver, self._driver = self._driver, None
        self._user_agent = None
        if driver is not None:
            try:
                driver.quit()
            except Exception as exc:  # a crashed browser cannot quit cleanly; the reaper will
                log.info("driver quit failed: %s", exc)
        if self._user_data_dir is not None and self._user_data_dir != self.persistent_user_data_dir:
            shutil.rmtree(self._user_data_dir, ignore_errors=True)
        self._user_data_dir = None

    def close(self) -> None:
        self._quit_driver()
        if self._display is not None:
            try:
                self._display.stop()
            except Exception as exc:
                log.info("Xvfb stop failed: %s", exc)
            self._display = None
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None

    def kill(self) -> None:
        """Ends Chromium, chromedriver and Xvfb at once, from any thread: a driver call waiting
        on them (a page that never loads) then fails instead of running to its timeout. A
        remote browser is not this process's to kill."""
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None

    # ---- page access --------------------------------------------------------------------
    def user_agent(self) -> str:
        if self._user_agent is None:
            self._user_agent = str(self.driver.execute_script("return navigator.userAgent"))
        return self._user_agent

    def all_cookies(self) -> list[dict[str, Any]]:
        """Every cookie of the session, for all domains (CDP where available)."""
        driver = self.driver
        if hasattr(driver, "execute_cdp_cmd"):
            try:
                cookies = driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
                return [_from_cdp(c) for c in cookies]
            except WebDriverException:
                pass
        return list(driver.get_cookies())

    def set_cookies(self, cookies: list[dict[str, Any]], home_url: str) -> None:
        driver = self.driver
        if hasattr(driver, "execute_cdp_cmd"):
            try:
                driver.execute_cdp_cmd(
                    "Network.setCookies", {"cookies": [_to_cdp(c) for c in cookies]}
                )
                return
            except WebDriverException as exc:
                log.info("CDP setCookies failed (%s); falling back to add_cookie", exc)
        driver.get(home_url)  # WebDriver adds cookies only for the current domain
        for cookie in cookies:
            allowed = {k: v for k, v in cookie.items()
                       if k in ("name", "value", "path", "domain", "secure", "httpOnly", "expiry")}
            try:
                driver.add_cookie(allowed)
            except WebDriverException:
                log.debug("cookie for another domain skipped: %s", cookie.get("domain"))


def _from_cdp(cookie: dict[str, Any]) -> dict[str, Any]:
    out = {
        "name": cookie["name"], "value": cookie["value"], "domain": cookie.get("domain", ""),
        "path": cookie.get("path", "/"), "secure": bool(cookie.get("secure")),
        "httpOnly": bool(cookie.get("httpOnly")),
    }
    if not cookie.get("session") and cookie.get("expires", -1) > 0:
        out["expiry"] = int(cookie["expires"])
    if cookie.get("sameSite"):
        out["sameSite"] = cookie["sameSite"]
    return out


def _to_cdp(cookie: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": cookie["name"], "value": cookie["value"], "path": cookie.get("path", "/"),
        "secure": bool(cookie.get("secure")), "httpOnly": bool(cookie.get("httpOnly")),
    }
    domain = cookie.get("domain") or ""
    if domain:
        out["domain"] = domain
    if "expiry" in cookie:
        out["expires"] = float(cookie["expiry"])
    if cookie.get("sameSite") in ("Strict", "Lax", "None"):
        out["sameSite"] = cookie["sameSite"]
    return out
