"""A dry run of a site profile on a live page: which of its selectors match, and how many of
the matches are visible, so an operator can see what broke on the day the site changes.

Nothing is clicked or typed: the page is opened, given the profile's grace period for results
that arrive late, and read. Selectors are also tried inside the login iframe when the page
has one. The page kind is what the crawler would conclude.
"""
from __future__ import annotations

import time
from typing import Any

from services.crawler.browser import BrowserSession
from services.crawler.page_kind import CLASSIFY_JS, classify_args
from services.crawler.profile import SiteProfile
from services.crawler.settings import CrawlerSettings

# (report name, where the selector lives in the profile)
_SELECTORS = (
    ("results.ready", lambda p: p.results.ready),
    ("results.item", lambda p: p.results.item),
    ("results.image", lambda p: p.results.image),
    ("results.empty", lambda p: p.results.empty),
    ("results.next_page", lambda p: p.results.next_page),
    ("search.search_box", lambda p: p.search.search_box),
    ("search.submit", lambda p: p.search.submit),
    ("login.wall_selector", lambda p: p.login.wall_selector),
    ("login.frame", lambda p: p.login.frame),
    ("login.show_qr_click", lambda p: p.login.show_qr_click),
    ("login.qr_element", lambda p: p.login.qr_element),
    ("login.status", lambda p: p.login.status),
    ("login.expired_selector", lambda p: p.login.expired_selector),
    ("login.refresh", lambda p: p.login.refresh),
    ("login.logged_in", lambda p: p.login.logged_in),
    ("interstitial.selector", lambda p: p.interstitial.selector),
    ("interstitial.human_selector", lambda p: p.interstitial.human_selector),
)

# Per selector: how many elements match (with the given text, if any) and how many of them
# are visible; an invalid selector reports its error.
_COUNT_JS = """
const selectors = arguments[0];
const visible = (el) => {
  if (!el.getClientRects().length) return false;
  const style = getComputedStyle(el);
  return style.visibility !== 'hidden' && style.display !== 'none';
};
const out = {};
for (const [name, sel, text] of selectors) {
  try {
    const found = Array.from(document.querySelectorAll(sel))
      .filter(el => !text || !text.length || [].concat(text).some(t => (el.innerText || '').includes(t)));
    out[name] = {matches: found.length, visible: found.filter(visible).length};
  } catch (e) { out[name] = {error: String(e.message || e)}; }
}
return out;
"""

_IMAGE_URLS_JS = """
const [itemSel, imgSel, attrs] = arguments;
return Array.from(document.querySelectorAll(itemSel)).slice(0, 3).map((item) => {
  const img = item.querySelector(imgSel);
  if (!img) return null;
  for (const a of attrs) { const v = img.getAttribute(a); if (v) return new URL(v, document.baseURI).href; }
  return null;
});
"""


def check_against(profile: SiteProfile, url: str, settings: CrawlerSettings,
                  wait_s: float | None = None) -> dict[str, Any]:
    """Opens ``url`` in a fresh browser and reports on every selector of ``profile``."""
    session = BrowserSession(settings, hide_automation=profile.browser.hide_automation)
    try:
        driver = session.driver
        driver.get(url)
        grace = profile.results.grace_s if wait_s is None else wait_s
        limit = time.monotonic() + settings.page_load_timeout_s
        while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < limit:
            time.sleep(0.1)
        # Results that come after the document: wait for an item or the grace period.
        limit = time.monotonic() + grace
        while time.monotonic() < limit and not driver.execute_script(
                "try { return document.querySelectorAll(arguments[0]).length } catch (e) { return 0 }",
                profile.results.item):
            time.sleep(0.1)
        named = [(name, get(profile), "") for name, get in _SELECTORS if get(profile)]
        prompts = [(f"soft_prompts[{p.name}]", p.selector, p.text_contains)
                   for p in profile.soft_prompts]
        report: dict[str, Any] = {
            "url": url, "final_url": driver.current_url, "title": driver.title,
            "page_kind": _page_kind(driver, profile),
            "selectors": driver.execute_script(_COUNT_JS, named + prompts),
        }
        sample = driver.execute_script(_IMAGE_URLS_JS, profile.results.item, profile.results.image,
                                       profile.results.image_attributes)
        report["image_urls"] = [{"found": u, "downloaded": profile.rewrite_image_url(u)}
                                for u in sample if u]
        if profile.login.frame:
            frames = driver.find_elements("css selector", profile.login.frame)
            if frames:
                driver.switch_to.frame(frames[0])
                try:
                    report["in_login_frame"] = driver.execute_script(_COUNT_JS, [
                        entry for entry in named
                        if entry[0].startswith("login.") and entry[0] != "login.frame"])
                finally:
                    driver.switch_to.default_content()
        return report
    finally:
        session.close()


def _page_kind(driver: Any, profile: SiteProfile) -> str:
    kind = driver.execute_script(CLASSIFY_JS, *classify_args(profile))
    if isinstance(kind, str) and kind.startswith("prompt:"):
        return f"soft prompt {profile.soft_prompts[int(kind.split(':')[1])].name!r}"
    if kind == "settled:title":
        return "interstitial"
    return "unknown" if kind in (None, "settled") else kind
