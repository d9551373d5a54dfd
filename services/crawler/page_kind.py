"""What a page of the site is, as the profile describes it: results, an empty search, the
login wall, a check only a person passes, an interstitial, a soft prompt to close, or not yet
known. One script, one WebDriver round trip per look; the crawler and check-profile share it.
"""
from __future__ import annotations

from typing import Any

from services.crawler.profile import SiteProfile

# Login, slider and captcha selectors count only when visible: login pages carry hidden
# captcha markup, and a hidden punish dialog can sit in a normal page. The login wall is
# checked first, so a redirect to the login page is never taken for a captcha. Items win over
# title words, and the interstitial's title words are only reported with 'settled' (the caller
# decides after the results' grace period) and never when the title holds the query. Returns
# 'prompt:<i>' for a soft prompt to close, 'settled' or 'settled:title' when the document is
# complete but nothing matched yet (results may still be on their way), null while loading.
CLASSIFY_JS = """
const [ready, interSel, titleMarks, urlMarks, wallUrl, wallSel, emptySel, itemSel, humanSel,
       prompts, humanUrl, humanTitle, query] = arguments;
const href = location.href;
const title = document.title || '';
const all = (sel) => { try { return sel ? Array.from(document.querySelectorAll(sel)) : []; } catch (e) { return []; } };
const visible = (el) => {
  if (!el.getClientRects().length) return false;
  const style = getComputedStyle(el);
  return style.visibility !== 'hidden' && style.display !== 'none' && style.opacity !== '0';
};
const shown = (sel) => all(sel).some(visible);
const says = (el, texts) => !texts.length || texts.some(t => (el.innerText || '').includes(t));
for (let i = 0; i < prompts.length; i++) {
  const [sel, texts] = prompts[i];
  if (all(sel).some(el => visible(el) && says(el, texts))) return 'prompt:' + i;
}
if (wallUrl.some(m => href.includes(m)) || shown(wallSel)) return 'login';
if (shown(humanSel) || humanUrl.some(m => href.includes(m)) ||
    humanTitle.some(m => title.includes(m))) return 'human';
if (shown(interSel) || urlMarks.some(m => href.includes(m))) return 'interstitial';
if (all(itemSel).length) return 'results';
if (shown(emptySel)) return 'empty';
const titled = !(query && title.includes(query)) && titleMarks.some(m => title.includes(m));
if (document.readyState === 'complete' || all(ready).length) return titled ? 'settled:title' : 'settled';
return null;
"""


def classify_args(profile: SiteProfile, query: str = "") -> list[Any]:
    """The script's arguments for ``profile``; ``query``: the search the page should be for."""
    interstitial = profile.interstitial
    return [
        profile.results.ready, interstitial.selector, interstitial.title_contains,
        interstitial.url_contains, profile.login.wall_url_contains, profile.login.wall_selector,
        profile.results.empty, profile.results.item, interstitial.human_selector,
        [[p.selector, p.text_contains] for p in profile.soft_prompts],
        interstitial.human_url_contains, interstitial.human_title_contains, query,
    ]
