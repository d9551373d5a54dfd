"""From a query to image URLs on the site's result pages, as the site profile describes them.

Each page load is paced by :class:`~services.crawler.politeness.Politeness` and counted
against the profile's page caps (:class:`~services.crawler.pace.PageBudget`); soft prompts are
clicked away; a login wall hands over to :class:`~services.crawler.login.QrLogin`; a slider
only a person can pass is shown to the operator; an interstitial backs off and retries; lazy
images are scrolled into view until their URL attribute is filled in; further pages are
opened (by URL or by the page's "next" button) while fewer URLs than wanted were found.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from selenium.common.exceptions import TimeoutException, WebDriverException

from services.crawler.browser import BrowserSession, is_session_lost
from services.crawler.login import QrLogin
from services.crawler.pace import PageBudget
from services.crawler.politeness import Politeness
from services.crawler.profile import SiteProfile

log = logging.getLogger(__name__)

PageKind = Literal["results", "empty", "login", "human", "interstitial", "unknown"]
_FINAL_KINDS = ("results", "empty", "login", "human", "interstitial")

# Classifies the current page without a round trip per selector. Login, slider and captcha
# selectors count only when visible: login pages carry hidden captcha markup, and a hidden
# punish dialog can sit in a normal page. The login wall is checked first, so a redirect to
# the login page is never taken for a captcha. Items win over title words, so a query
# containing the interstitial's title word is not mistaken for one. Returns 'prompt:<i>'
# for a soft prompt to click away, 'settled' when the document is complete but nothing
# matched yet (results may still be on their way), null while it is still loading.
_CLASSIFY_JS = """
const [ready, interSel, titleMarks, urlMarks, wallUrl, wallSel, emptySel, itemSel, humanSel,
       prompts] = arguments;
const href = location.href;
const all = (sel) => { try { return sel ? Array.from(document.querySelectorAll(sel)) : []; } catch (e) { return []; } };
const visible = (el) => {
  if (!el.getClientRects().length) return false;
  const style = getComputedStyle(el);
  return style.visibility !== 'hidden' && style.display !== 'none' && style.opacity !== '0';
};
const shown = (sel) => all(sel).some(visible);
for (let i = 0; i < prompts.length; i++) {
  const [sel, text] = prompts[i];
  if (all(sel).some(el => visible(el) && (!text || (el.innerText || '').includes(text)))) return 'prompt:' + i;
}
if (wallUrl.some(m => href.includes(m)) || shown(wallSel)) return 'login';
if (shown(humanSel)) return 'human';
if (shown(interSel) || urlMarks.some(m => href.includes(m))) return 'interstitial';
if (all(itemSel).length) return 'results';
if (shown(emptySel)) return 'empty';
if (titleMarks.some(m => document.title.includes(m))) return 'interstitial';
if (document.readyState === 'complete' || all(ready).length) return 'settled';
return null;
"""

# Clicks the soft prompt's target (the first visible one).
_CLICK_PROMPT_JS = """
const [sel, text, clickSel] = arguments;
const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
const found = Array.from(document.querySelectorAll(sel))
  .find(el => visible(el) && (!text || (el.innerText || '').includes(text)));
if (!found) return false;
let target = found;
if (clickSel) {
  target = found.querySelector(clickSel) || Array.from(document.querySelectorAll(clickSel)).find(visible);
}
if (!target) return false;
target.click();
return true;
"""

# Marks the current items, then clicks the next-page control; returns false when there is none.
_CLICK_NEXT_JS = """
const [itemSel, nextSel] = arguments;
document.querySelectorAll(itemSel).forEach(el => { el.__cnclipSeen = true; });
window.__cnclipPage = (window.__cnclipPage || 0) + 1;
const next = Array.from(document.querySelectorAll(nextSel)).find(el => !el.disabled);
if (!next) return false;
next.scrollIntoView({block: 'center'});
next.click();
return true;
"""

# True once the click led somewhere: a new document, or items that were not there before.
_PAGE_CHANGED_JS = """
const [itemSel] = arguments;
if (window.__cnclipPage === undefined) return true;
return Array.from(document.querySelectorAll(itemSel)).some(el => !el.__cnclipSeen);
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
        pace = profile.pace
        self.budget = PageBudget(pace.max_pages_per_hour, pace.max_pages_per_day,
                                 pace.search_cooldown_s)
        self.pages_loaded = 0

    def collect(self, query: str, want: int, deadline: float) -> SearchOutcome:
        """Up to ``want`` distinct image URLs for ``query`` (a normalised query)."""
        outcome = SearchOutcome()
        seen: set[str] = set()
        self._wait_for_pace(self.budget.search_delay(), deadline, "the pause between searches")
        self.budget.record_search()
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
                    url = self.profile.rewrite_image_url(item["url"])
                    if url not in seen:
                        seen.add(url)
                        outcome.urls.append(url)
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

    def _wait_for_pace(self, delay: float, deadline: float, what: str) -> None:
        if delay <= 0:
            return
        if time.time() + delay > deadline:
            raise SearchFailed(f"{what} ({self.budget.describe() or 'cooldown'}) leaves no time "
                               f"before the deadline: next page in {delay:.0f}s")
        log.info("waiting %.1fs for %s", delay, what)
        time.sleep(delay)

    # ---- one result page ----------------------------------------------------------------
    def _open(self, query: str, page_index: int, deadline: float) -> PageKind:
        interstitials = errors = logins = 0
        while True:
            if time.time() > deadline:
                raise SearchFailed("deadline passed while searching")
            self._wait_for_pace(self.budget.page_delay(), deadline, "the page cap")
            self.politeness.wait()
            self.budget.record_page()
            kind, detail = self._load(query, page_index)
            if kind == "human":
                outcome = self.login.wait_for_human(
                    deadline, lambda: self._classify(settle=False)[0] == "human")
                if outcome == "timeout":
                    raise SearchFailed("the site shows a check only a person can pass (a slider); "
                                       "the operator was asked on the login page")
                # Solved: the same page again (a click-paged search starts over).
                page_index = page_index if self.profile.search.paging == "url" else 0
                continue
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
        search = self.profile.search
        try:
            if page_index > 0 and search.paging == "click":
                if not self._click_next():
                    # The page that had a next button is gone (e.g. after a login): start over.
                    self._first_page(query)
            elif page_index == 0:
                self._first_page(query)
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

    def _first_page(self, query: str) -> None:
        if self.profile.search.mode == "form":
            self._submit_form(query)
        else:
            self.session.driver.get(self.profile.search_url(query, 0))

    def _submit_form(self, query: str) -> None:
        driver = self.session.driver
        search = self.profile.search
        driver.get(self.profile.expand(search.home_url))
        before = driver.current_url
        handles = set(driver.window_handles)
        # The value is set by script: ChromeDriver cannot type characters outside the BMP.
        driver.execute_script(
            "const box = document.querySelector(arguments[0]); box.value = arguments[1];"
            "box.dispatchEvent(new Event('input', {bubbles: true}));"
            "const button = arguments[2] && document.querySelector(arguments[2]);"
            "if (button) { button.click(); } else { box.form.submit(); }",
            search.search_box, query, search.submit,
        )
        limit = time.monotonic() + self.session.settings.page_load_timeout_s
        while time.monotonic() < limit:
            opened = set(driver.window_handles) - handles
            if opened:
                # Results in a new tab: continue there, and close the others so one session
                # keeps one tab.
                new = opened.pop()
                for handle in handles:
                    driver.switch_to.window(handle)
                    driver.close()
                driver.switch_to.window(new)
                break
            if driver.current_url != before:
                break
            time.sleep(0.05)
        self._wait_loading(limit)

    def _wait_loading(self, limit: float) -> None:
        """A page opened by a click has no page-load wait of its own."""
        driver = self.session.driver
        while time.monotonic() < limit:
            try:
                if driver.execute_script("return document.readyState") != "loading":
                    return
            except WebDriverException as exc:
                if is_session_lost(exc):
                    raise
            time.sleep(0.05)

    def _click_next(self) -> bool:
        driver = self.session.driver
        results = self.profile.results
        if not results.next_page or not driver.execute_script(_CLICK_NEXT_JS, results.item,
                                                              results.next_page):
            return False
        limit = time.monotonic() + self.session.settings.page_load_timeout_s
        while time.monotonic() < limit:
            try:
                if driver.execute_script(_PAGE_CHANGED_JS, results.item):
                    break
            except WebDriverException as exc:
                if is_session_lost(exc):
                    raise
            # A dialog instead of the next page: the classification will say what it is.
            if self._classify(settle=False)[0] in ("human", "login", "interstitial"):
                break
            time.sleep(0.05)
        self._wait_loading(limit)
        return True

    def _classify(self, settle: bool = True) -> tuple[PageKind, str]:
        """What the page is. ``settle``: wait for a loading page (and for results that come
        after the document, up to the profile's grace period) and click soft prompts away."""
        profile = self.profile
        driver = self.session.driver
        prompts = [[p.selector, p.text_contains] for p in profile.soft_prompts]
        args = [
            profile.results.ready, profile.interstitial.selector,
            profile.interstitial.title_contains, profile.interstitial.url_contains,
            profile.login.wall_url_contains, profile.login.wall_selector,
            profile.results.empty, profile.results.item, profile.interstitial.human_selector,
            prompts,
        ]
        limit = time.monotonic() + self.session.settings.page_load_timeout_s
        settled_at: float | None = None
        prompts_clicked = 0
        while True:
            kind = driver.execute_script(_CLASSIFY_JS, *args)
            if not settle:
                return (kind if kind in _FINAL_KINDS else "unknown"), ""
            if isinstance(kind, str) and kind.startswith("prompt:") and prompts_clicked < 5:
                prompt = profile.soft_prompts[int(kind.split(":")[1])]
                log.info("soft prompt %r: clicking it away", prompt.name)
                driver.execute_script(_CLICK_PROMPT_JS, prompt.selector, prompt.text_contains,
                                      prompt.click)
                prompts_clicked += 1
                settled_at = None
                time.sleep(0.2)
                self._wait_loading(limit)
                continue
            if kind in _FINAL_KINDS:
                break
            if kind is not None:  # settled, or a prompt that keeps coming back
                now = time.monotonic()
                settled_at = settled_at if settled_at is not None else now
                if now - settled_at >= profile.results.grace_s:
                    kind = "unknown"
                    break
            if time.monotonic() > limit:
                kind = "unknown"
                break
            time.sleep(0.05)
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
