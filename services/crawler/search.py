"""From a query to image URLs on the site's result pages, as the site profile describes them.

Each page load is paced by :class:`~services.crawler.politeness.Politeness` and reserved in
the account's budget (:class:`~services.crawler.budget.AccountBudget`); soft prompts are
closed; a login wall hands over to :class:`~services.crawler.login.QrLogin`; a check only a
person can pass goes to the operator; an interstitial backs off (never past the request's
deadline) and retries. The search box is typed into with key events and submitted with a
trusted click (:mod:`services.crawler.human_input`); a results page for another query than
the one asked counts as ``wrong_query`` and the search is typed again once. Cards are brought
into view with the wheel until their picture has a URL (or a bound is reached); further pages
are opened by URL or by a trusted click on the page's "next" button.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from selenium.common.exceptions import TimeoutException, WebDriverException

from services.crawler import human_input
from services.crawler.browser import BrowserSession, is_session_lost
from services.crawler.budget import AccountBudget
from services.crawler.human_input import HumanInput
from services.crawler.login import QrLogin
from services.crawler.operator_relay import OperatorRelay
from services.crawler.page_kind import CLASSIFY_JS, classify_args
from services.crawler.politeness import Politeness
from services.crawler.profile import SiteProfile
from shared.query import normalize_query

log = logging.getLogger(__name__)

PageKind = Literal["results", "empty", "login", "human", "interstitial", "unknown"]
_FINAL_KINDS = ("results", "empty", "login", "human", "interstitial")

# The soft prompt's control to click (the first visible one, inside the prompt first).
_PROMPT_TARGET_JS = """
const [sel, texts, clickSel] = arguments;
const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
const says = (el) => !texts.length || texts.some(t => (el.innerText || '').includes(t));
const found = Array.from(document.querySelectorAll(sel)).find(el => visible(el) && says(el));
if (!found) return null;
if (!clickSel) return found;
return Array.from(found.querySelectorAll(clickSel)).find(visible)
  || Array.from(document.querySelectorAll(clickSel)).find(visible) || null;
"""

# Marks the current items and returns the next-page control (null when there is none).
_NEXT_CONTROL_JS = """
const [itemSel, nextSel] = arguments;
document.querySelectorAll(itemSel).forEach(el => { el.__cnclipSeen = true; });
window.__cnclipPage = (window.__cnclipPage || 0) + 1;
return Array.from(document.querySelectorAll(nextSel)).find(el => !el.disabled) || null;
"""

# True once the click led somewhere: a new document, or items that were not there before.
_PAGE_CHANGED_JS = """
const [itemSel] = arguments;
if (window.__cnclipPage === undefined) return true;
return Array.from(document.querySelectorAll(itemSel)).some(el => !el.__cnclipSeen);
"""

# The items' picture URLs so far, and where the first item still waiting for one is: a card
# whose <img> has no URL yet, or that has no <img> at all (some render it only in view).
_COLLECT_JS = """
const [itemSel, imgSel, attrs, markers, want, nextSel] = arguments;
const items = Array.from(document.querySelectorAll(itemSel));
const found = items.map((item) => {
  const img = item.querySelector(imgSel);
  if (!img) return {state: 'noimg', url: null};
  for (const a of attrs) {
    const v = img.getAttribute(a);
    if (v && !markers.some(m => v.includes(m))) {
      try { return {state: 'ok', url: new URL(v, document.baseURI).href}; }
      catch (e) { return {state: 'bad', url: v}; }
    }
  }
  return {state: 'pending', url: null};
});
let ok = 0, target = -1;
for (let i = 0; i < found.length && ok < want; i++) {
  if (found[i].state === 'ok') ok += 1;
  else if (found[i].state !== 'bad') { target = i; break; }
}
let box = null;
if (target >= 0) {
  const r = items[target].getBoundingClientRect();
  box = {top: r.top, bottom: r.bottom, vh: window.innerHeight, vw: window.innerWidth};
}
let hasNext = false;
try { hasNext = !!(nextSel && document.querySelector(nextSel)); } catch (e) {}
return {items: found, target: target, box: box, hasNext: hasNext, scrollY: window.scrollY};
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
        operator: OperatorRelay,
        budget: AccountBudget,
        count: Callable[[str], None] = lambda event: None,
    ):
        self.session = session
        self.profile = profile
        self.politeness = politeness
        self.login = login
        self.operator = operator
        # Counts an event in the rank's statistics (e.g. wrong_query).
        self.count = count
        self._input: tuple[Any, HumanInput | None] | None = None
        self.budget = budget
        # Set when the site challenged this search: the account cools down after it.
        self._challenged: str | None = None
        self.pages_loaded = 0

    def collect(self, query: str, want: int, deadline: float) -> SearchOutcome:
        """Up to ``want`` distinct image URLs for ``query`` (a normalised query)."""
        self._wait_for_pace(self.budget.search_delay(), deadline, "the pause between searches")
        self.budget.record_search()
        self._challenged = None
        try:
            return self._collect(query, want, deadline)
        finally:
            if self._challenged is not None:
                pace = self.profile.pace
                seconds = {"a check the operator passed": pace.cooldown_after_challenge_s,
                           "a check nobody passed in time": pace.cooldown_after_human_timeout_s,
                           "an interstitial": pace.cooldown_after_interstitial_s}[self._challenged]
                self.budget.cool_down(seconds, self._challenged)

    def _collect(self, query: str, want: int, deadline: float) -> SearchOutcome:
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
                    outcome.unusable.append("result item without an image after scrolling")
                    break
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
            raise SearchFailed(f"{what} leaves no time before the deadline: next page in "
                               f"{delay:.0f}s")
        log.info("waiting %.1fs for %s", delay, what)
        time.sleep(delay)

    # ---- input ------------------------------------------------------------------------
    def _human(self) -> HumanInput | None:
        """Trusted input into the current browser; None where it takes no DevTools input."""
        driver = self.session.driver
        if self._input is None or self._input[0] is not driver:
            self._input = (driver, HumanInput(driver) if human_input.available(driver) else None)
            if self._input[1] is None:
                log.warning("this browser takes no DevTools input: clicks and typing by script")
        return self._input[1]

    def _click(self, element: Any) -> None:
        person = self._human()
        if person is not None:
            person.click_element(element)
        else:
            self.session.driver.execute_script("arguments[0].click();", element)

    # ---- one result page ----------------------------------------------------------------
    def _open(self, query: str, page_index: int, deadline: float) -> PageKind:
        interstitials = errors = logins = wrong = 0
        while True:
            if time.time() > deadline:
                raise SearchFailed("deadline passed while searching")
            while (delay := self.budget.reserve_page()) > 0:
                self._wait_for_pace(delay, deadline,
                                    f"the account's page budget ({self.budget.last_reason})")
            self.politeness.wait()
            kind, detail = self._load(query, page_index)
            if kind == "human":
                outcome = self.operator.wait(
                    deadline, self.profile.interstitial.human_wait_s,
                    lambda: self._classify(settle=False)[0] == "human",
                    self.profile.interstitial.human_selector)
                if outcome == "timeout":
                    self._challenged = "a check nobody passed in time"
                    raise SearchFailed("the site shows a check only a person can pass (a slider); "
                                       "the operator was asked on the login page")
                self._challenged = self._challenged or "a check the operator passed"
                # Solved: the same page again (a click-paged search starts over).
                page_index = page_index if self.profile.search.paging == "url" else 0
                continue
            if kind == "interstitial":
                self._challenged = self._challenged or "an interstitial"
                if interstitials >= self.profile.interstitial.max_retries:
                    raise SearchFailed(
                        "the site shows a 'verify you are human' page (interstitial) after "
                        f"{interstitials + 1} tries"
                    )
                interstitials += 1
                pause = self.politeness.interstitial_backoff(max(0.0, deadline - time.time()))
                if pause is None:
                    raise SearchFailed("the site shows a 'verify you are human' page "
                                       "(interstitial) and backing off would pass the deadline")
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
            shown = self._page_query()
            if page_index == 0 and shown is not None and shown != query:
                # E.g. a box that ignored the typing and searched its placeholder hot word.
                self.count("wrong_query")
                log.warning("results page for %r instead of %r", shown, query)
                if wrong >= 1:
                    raise SearchFailed(f"the results page is for {shown!r}, not for the query asked")
                wrong += 1
                continue
            self.politeness.page_ok()
            return kind

    def _page_query(self) -> str | None:
        """The query the results page is for (normalised), from its address; None when the
        profile names no query parameter or the address has none."""
        param = self.profile.search.query_param
        if not param:
            return None
        values = parse_qs(urlsplit(self.session.driver.current_url).query).get(param)
        return normalize_query(values[0]) if values else None

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
        return self._classify(query=query)

    def _first_page(self, query: str) -> None:
        if self.profile.search.mode == "form":
            self._submit_form(query)
        else:
            self.session.driver.get(self.profile.search_url(query, 0))

    def _search_box(self) -> Any:
        """The visible search box, waited for: the home page loads eagerly and draws it later."""
        driver = self.session.driver
        selector = self.profile.search.search_box
        limit = time.monotonic() + self.profile.search.box_timeout_s
        while True:
            box = driver.execute_script(
                "return Array.from(document.querySelectorAll(arguments[0]))"
                ".find(el => el.getClientRects().length > 0 && !el.disabled) || null;", selector)
            if box is not None:
                return box
            if time.monotonic() > limit:
                raise SearchFailed(f"the home page shows no search box ({selector!r}) within "
                                   f"{self.profile.search.box_timeout_s:g}s")
            time.sleep(0.1)

    def _submit_form(self, query: str) -> None:
        driver = self.session.driver
        search = self.profile.search
        driver.get(self.profile.expand(search.home_url))
        box = self._search_box()
        before = driver.current_url
        handles = set(driver.window_handles)
        person = self._human()
        if person is None:
            # No trusted input in this browser: the value by script, as a last resort.
            driver.execute_script(
                "const box = arguments[0]; box.value = arguments[1];"
                "box.dispatchEvent(new Event('input', {bubbles: true}));"
                "const button = arguments[2] && document.querySelector(arguments[2]);"
                "if (button) { button.click(); } else { box.form.submit(); }",
                box, query, search.submit)
        else:
            person.click_element(box)
            if not driver.execute_script("return document.activeElement === arguments[0];", box):
                driver.execute_script("arguments[0].focus();", box)
            person.clear_focused()
            person.type_text(query)
            button = driver.execute_script(
                "const b = arguments[0] && Array.from(document.querySelectorAll(arguments[0]))"
                ".find(el => el.getClientRects().length > 0); return b || null;", search.submit)
            time.sleep(person.rng.uniform(0.2, 0.6))
            if button is not None:
                person.click_element(button)
            else:
                person.key("Enter")
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
        if not results.next_page:
            return False
        control = driver.execute_script(_NEXT_CONTROL_JS, results.item, results.next_page)
        if control is None:
            return False
        self._click(control)
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

    def _classify(self, settle: bool = True, query: str = "") -> tuple[PageKind, str]:
        """What the page is. ``settle``: wait for a loading page (and for results that come
        after the document, up to the profile's grace period) and close soft prompts."""
        profile = self.profile
        driver = self.session.driver
        args = classify_args(profile, query)
        limit = time.monotonic() + self.session.settings.page_load_timeout_s
        settled_at: float | None = None
        prompts_clicked = 0
        while True:
            kind = driver.execute_script(CLASSIFY_JS, *args)
            if not settle:
                return (kind if kind in _FINAL_KINDS else "unknown"), ""
            if isinstance(kind, str) and kind.startswith("prompt:") and prompts_clicked < 5:
                prompt = profile.soft_prompts[int(kind.split(":")[1])]
                log.info("soft prompt %r: closing it", prompt.name)
                target = driver.execute_script(_PROMPT_TARGET_JS, prompt.selector,
                                               prompt.text_contains, prompt.click)
                if target is not None:
                    self._click(target)
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
                    kind = "interstitial" if kind == "settled:title" else "unknown"
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
        """The items' picture URLs, bringing each card still without one into view with the
        wheel, a round at a time, until it has one or ``scroll.max_rounds`` is reached."""
        driver = self.session.driver
        results = self.profile.results
        scroll = self.profile.scroll
        args = (results.item, results.image, results.image_attributes,
                results.placeholder_markers, max(1, want), results.next_page)
        person = self._human()
        last_y: float | None = None
        wheeled = False
        for _ in range(scroll.max_rounds):
            found = driver.execute_script(_COLLECT_JS, *args)
            box = found["box"]
            if found["target"] < 0:
                return found
            stuck = wheeled and last_y is not None and abs(found["scrollY"] - last_y) < 1
            last_y = found["scrollY"]
            wheeled = False
            in_view = 0 <= box["top"] < box["vh"] * 0.85 and box["bottom"] > 0
            if not in_view:
                # The card near the top of the view, as a person reading down the list.
                delta = box["top"] - box["vh"] * 0.15
                if person is not None and not stuck:
                    person.wheel(delta, box["vw"] / 2, box["vh"] / 2)
                    wheeled = True
                else:  # no wheel in this browser, or the page does not scroll by it
                    driver.execute_script(
                        "document.querySelectorAll(arguments[0])[arguments[1]]"
                        ".scrollIntoView({block: 'start'});", results.item, found["target"])
            time.sleep(max(scroll.pause_s, 0.12 if wheeled else 0.0))
        return driver.execute_script(_COLLECT_JS, *args)
