"""From a query to image URLs on the site's result pages, as the site profile describes them.

Each page load is paced by :class:`~services.crawler.politeness.Politeness`; a login wall hands
over to :class:`~services.crawler.login.QrLogin`; an interstitial backs off and retries; lazy
images are scrolled into view until their URL attribute is filled in; further pages are
opened while fewer URLs than wanted were found.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from selenium.common.exceptions import TimeoutException, WebDriverException

from services.crawler.browser import BrowserSession, is_session_lost
from services.crawler.login import QrLogin
from services.crawler.politeness import Politeness
from services.crawler.profile import SiteProfile

log = logging.getLogger(__name__)

PageKind = Literal["results", "empty", "login", "interstitial", "unknown"]

# Classifies the current page without a round trip per selector. Items win over title words,
# so a query containing the interstitial's title word is not mistaken for one.
_CLASSIFY_JS = """
const [ready, interSel, titleMarks, urlMarks, wallUrl, wallSel, emptySel, itemSel] = arguments;
const href = location.href;
const has = (sel) => { try { return !!(sel && document.querySelector(sel)); } catch (e) { return false; } };
if (has(interSel) || urlMarks.some(m => href.includes(m))) return 'interstitial';
if (wallUrl.some(m => href.includes(m)) || has(wallSel)) return 'login';
if (has(itemSel)) return 'results';
if (has(emptySel)) return 'empty';
if (titleMarks.some(m => document.title.includes(m))) return 'interstitial';
if (document.readyState === 'complete' || has(ready)) return 'unknown';
return null;
"""

# Scrolls the first item whose image has no URL yet into view, waits, and repeats, all inside
# the page (one WebDriver round trip per page instead of one per scroll step).
_LAZY_URLS_JS = """
const [itemSel, imgSel, attrs, markers, want, pauseMs, maxRounds, nextSel, done] = arguments;
let round = 0;
function collect() {
  const items = Array.from(document.querySelectorAll(itemSel));
  return items.map((item) => {
    const img = item.querySelector(imgSel);
    if (!img) return {state: 'noimg', url: null, el: item};
    for (const a of attrs) {
      const v = img.getAttribute(a);
      if (v && !markers.some(m => v.includes(m))) {
        try { return {state: 'ok', url: new URL(v, document.baseURI).href, el: item}; }
        catch (e) { return {state: 'bad', url: v, el: item}; }
      }
    }
    return {state: 'pending', url: null, el: item};
  });
}
function step() {
  const found = collect();
  let ok = 0, firstPending = -1;
  for (let i = 0; i < found.length && ok < want; i++) {
    if (found[i].state === 'ok') ok += 1;
    else if (found[i].state === 'pending') { firstPending = i; break; }
  }
  if (firstPending < 0 || round >= maxRounds) {
    let hasNext = false;
    try { hasNext = !!(nextSel && document.querySelector(nextSel)); } catch (e) {}
    done({items: found.map(f => ({state: f.state, url: f.url})), hasNext: hasNext, rounds: round});
    return;
  }
  round += 1;
  found[firstPending].el.scrollIntoView({block: 'start'});
  setTimeout(() => requestAnimationFrame(step), pauseMs);
}
step();
"""


class SearchFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class SearchOutcome:
    urls: list[str] = field(default_factory=list)
    # Why fewer URLs than wanted were found (None when enough were).
    shortfall: str | None = None
    # Items whose image never got a usable URL, with the reason.
    unusable: list[str] = field(default_factory=list)
    pages: int = 0


class SiteSearch:
    def __init__(
        self,
        session: BrowserSession,
        profile: SiteProfile,
        politeness: Politeness,
        login: QrLogin,
    ):
        self.session = session
        self.profile = profile
        self.politeness = politeness
        self.login = login
        self.pages_loaded = 0

    def collect(self, query: str, want: int, deadline: float) -> SearchOutcome:
        """Up to ``want`` distinct image URLs for ``query`` (a normalised query)."""
        outcome = SearchOutcome()
        seen: set[str] = set()
        for page_index in range(self.profile.search.max_pages):
            kind = self._open(query, page_index, deadline)
            outcome.pages += 1
            if kind == "empty":
                outcome.shortfall = ("no results for the query" if page_index == 0
                                     else f"no more results after {len(outcome.urls)} images")
                return outcome
            found = self._lazy_urls(want - len(outcome.urls))
            for item in found["items"]:
                if len(outcome.urls) >= want:
                    break
                if item["state"] == "ok":
                    if item["url"] not in seen:
                        seen.add(item["url"])
                        outcome.urls.append(item["url"])
                elif item["state"] == "pending":
                    # Items past the first one that never loaded were not scrolled to.
                    outcome.unusable.append("lazy image never got its URL after scrolling")
                    break
                elif item["state"] == "bad":
                    outcome.unusable.append(f"malformed image URL {item['url']!r}")
                else:
                    outcome.unusable.append("result item without an image")
            if len(outcome.urls) >= want:
                outcome.unusable = []
                return outcome
            if not found["hasNext"]:
                outcome.shortfall = f"the search shows only {len(outcome.urls)} usable images"
                return outcome
        outcome.shortfall = (f"only {len(outcome.urls)} usable images in "
                             f"{self.profile.search.max_pages} result pages")
        return outcome

    # ---- one result page ----------------------------------------------------------------
    def _open(self, query: str, page_index: int, deadline: float) -> PageKind:
        interstitials = errors = logins = 0
        while True:
            if time.time() > deadline:
                raise SearchFailed("deadline passed while searching")
            self.politeness.wait()
            kind, detail = self._load(query, page_index)
            if kind == "interstitial":
                if interstitials >= self.profile.interstitial.max_retries:
                    raise SearchFailed(
                        "the site shows a 'verify you are human' page (interstitial) after "
                        f"{interstitials + 1} tries"
                    )
                interstitials += 1
                pause = self.politeness.interstitial_backoff()
                log.warning("interstitial on %r; backed off %.1fs", query, pause)
                continue
            if kind == "login":
                outcome = self.login.wait(deadline)
                if outcome == "timeout":
                    raise SearchFailed("not logged in: nobody scanned the QR code before the deadline")
                logins += 1
                if logins > 3:
                    raise SearchFailed("the site keeps asking for a login after a successful one")
                continue
            if kind == "unknown":
                if errors >= 1:
                    raise SearchFailed(f"search page error: {detail}")
                errors += 1
                time.sleep(0.5)
                continue
            self.politeness.page_ok()
            return kind

    def _load(self, query: str, page_index: int) -> tuple[PageKind, str]:
        driver = self.session.driver
        try:
            if self.profile.search.mode == "form" and page_index == 0:
                self._submit_form(query)
            else:
                driver.get(self.profile.search_url(query, page_index))
        except TimeoutException:
            return "unknown", f"page did not load within {self.session.settings.page_load_timeout_s}s"
        except WebDriverException as exc:
            if is_session_lost(exc):
                raise
            return "unknown", f"navigation failed: {(exc.msg or str(exc)).splitlines()[0]}"
        finally:
            self.pages_loaded += 1
        return self._classify()

    def _submit_form(self, query: str) -> None:
        driver = self.session.driver
        search = self.profile.search
        driver.get(self.profile.expand(search.home_url))
        before = driver.current_url
        # The value is set by script: ChromeDriver cannot type characters outside the BMP.
        driver.execute_script(
            "const box = document.querySelector(arguments[0]); box.value = arguments[1];"
            "box.dispatchEvent(new Event('input', {bubbles: true}));"
            "const button = arguments[2] && document.querySelector(arguments[2]);"
            "if (button) { button.click(); } else { box.form.submit(); }",
            search.search_box, query, search.submit,
        )
        limit = time.monotonic() + self.session.settings.page_load_timeout_s
        while driver.current_url == before and time.monotonic() < limit:
            time.sleep(0.05)

    def _classify(self) -> tuple[PageKind, str]:
        profile = self.profile
        driver = self.session.driver
        args = [
            profile.results.ready, profile.interstitial.selector,
            profile.interstitial.title_contains, profile.interstitial.url_contains,
            profile.login.wall_url_contains, profile.login.wall_selector,
            profile.results.empty, profile.results.item,
        ]
        limit = time.monotonic() + self.session.settings.page_load_timeout_s
        while True:
            kind = driver.execute_script(_CLASSIFY_JS, *args)
            if kind is not None:
                break
            if time.monotonic() > limit:
                kind = "unknown"
                break
            time.sleep(0.03)
        detail = ""
        if kind == "unknown":
            text = driver.execute_script(
                "return (document.title || '') + ' | ' + (document.body ? document.body.innerText : '')"
            )
            detail = f"unexpected page {' '.join(str(text).split())[:120]!r}"
        return kind, detail

    def _lazy_urls(self, want: int) -> dict:
        results = self.profile.results
        scroll = self.profile.scroll
        return self.session.driver.execute_async_script(
            _LAZY_URLS_JS, results.item, results.image, results.image_attributes,
            results.placeholder_markers, max(1, want), int(scroll.pause_s * 1000),
            scroll.max_rounds, results.next_page,
        )
