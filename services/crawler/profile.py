"""Site profiles: everything that is particular to one shopping site, read from a TOML file.

Sites change their pages, so selectors live in a file the operator can copy and edit
(``CNCLIP_CRAWLER_PROFILE=/path/to/mysite.toml``) rather than in code. The bundled profiles
are in ``services/crawler/profiles/``. pydantic validates the file and names the offending key
when something is missing or mistyped.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROFILES_DIR = Path(__file__).parent / "profiles"


class ProfileError(ValueError):
    pass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchSection(_Section):
    # Placeholders: {base_url}, {query} (URL-encoded), {offset} (items skipped), {page} (1-based).
    url: str
    # "url": open the search URL directly (handles any character); "form": type into the box.
    mode: str = Field("url", pattern="^(url|form)$")
    home_url: str = "{base_url}/"
    search_box: str = ""
    submit: str = ""
    # Further result pages: "url" opens the search URL of that page; "click" clicks
    # results.next_page on the current page (for sites that rewrite a direct page URL).
    paging: str = Field("url", pattern="^(url|click)$")
    page_size: int = Field(44, ge=1)
    max_pages: int = Field(3, ge=1)
    # The results page must be for the query asked: this parameter of its address holds the
    # query (empty: not checked). Else the page counts as wrong_query and the search is typed
    # again once.
    query_param: str = ""
    # How long to wait for the search box after the home page loaded (pages load eagerly
    # and draw the box later).
    box_timeout_s: float = Field(10.0, ge=0)


class UrlRewrite(_Section):
    # A Python regular expression (re.sub) and its replacement, e.g. a thumbnail URL to the
    # original picture.
    pattern: str
    replace: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value


class ResultsSection(_Section):
    # The page is ready once one of these matches (results, empty notice, login, interstitial).
    ready: str
    # Results that a script fetches after the document is complete: how long to wait for one
    # of the selectors to match before calling the page unexpected (instead of reloading it).
    grace_s: float = Field(0.0, ge=0)
    item: str
    image: str
    # Attributes tried in order; the first one holding a real URL wins.
    image_attributes: list[str] = ["data-src", "src"]
    # Values that are not real images (lazy-load placeholders): URL substrings.
    placeholder_markers: list[str] = ["data:image", "placeholder", "blank.gif"]
    empty: str = ""
    next_page: str = ""
    # Applied in order to every image URL found (after relative URLs are made absolute).
    image_url_rewrite: list[UrlRewrite] = []


class ScrollSection(_Section):
    # Lazy images get their URL once scrolled into view: scroll item by item, wait a little.
    pause_s: float = Field(0.05, ge=0)
    max_rounds: int = Field(60, ge=1)
    settle_timeout_s: float = Field(3.0, ge=0)


class LoginSection(_Section):
    # Any of these in the current URL means the site wants a login.
    wall_url_contains: list[str] = []
    # Or this element on the page.
    wall_selector: str = ""
    # Optional click that switches the login page to its QR code (e.g. a "scan" tab).
    show_qr_click: str = ""
    # Optional iframe holding the login form.
    frame: str = ""
    qr_element: str
    status: str = ""
    expired_text: list[str] = []
    expired_selector: str = ""
    refresh: str = ""
    # Shown on pages of a logged-in visitor (reported by check-profile; not used to decide).
    logged_in: str = ""
    # Cookies that only a logged-in session has: when given, leaving the login page counts as
    # a login only once one of them is set (a guest also gets the site's other cookies).
    logged_in_cookies: list[str] = []
    # Cookies naming the logged-in account (the first one set wins): the page budget is the
    # account's, shared by every rank logged in as it. None set: the rank's own budget.
    account_cookies: list[str] = []
    # How long to wait for the QR code to be drawn (a <canvas> stays blank for a moment).
    qr_render_timeout_s: float = Field(5.0, ge=0)
    # A page that shows the login wall when logged out (probed when a worker starts).
    check_url: str = ""
    # A QR is re-taken at least this often even if nothing signals expiry.
    qr_max_age_s: float = Field(240.0, gt=0)
    # While nobody has /login open, at most this many new codes in a row (with growing
    # pauses); then none until someone opens /login.
    idle_qr_refreshes: int = Field(3, ge=0)


class InterstitialSection(_Section):
    # A page that passes by itself after a pause: backed off, then reloaded. Selectors count
    # only when the element is visible (pages carry hidden captcha markup). Title words count
    # only on a page that settled without results, and never when the title holds the query
    # (a search for 安全帽 is titled with it).
    selector: str = ""
    title_contains: list[str] = []
    url_contains: list[str] = []
    backoff_s: float = Field(30.0, ge=0)
    backoff_factor: float = Field(2.0, ge=1)
    max_retries: int = Field(2, ge=0)
    # A check only a person can pass (a slider): not backed off, but shown to the operator
    # (login state "needs_human" with a screenshot) and waited for up to human_wait_s.
    human_selector: str = ""
    # The same check recognised by the address (a top-level punish page) or the page title.
    human_url_contains: list[str] = []
    human_title_contains: list[str] = []
    human_wait_s: float = Field(300.0, ge=0)


class SoftPrompt(_Section):
    """A dialog or button the crawler clicks away before classifying the page (a "visiting
    too often" notice with a close button, a one-click re-login)."""

    name: str
    # The prompt is there when an element matching this is visible...
    selector: str
    # ...and its text contains one of these (empty: any text; a single string is taken too).
    text_contains: list[str] = []
    # What to click, looked for inside the prompt first (empty: the matched element itself).
    click: str = ""

    @field_validator("text_contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if isinstance(value, str):
            return [value] if value else []
        return value


class PolitenessSection(_Section):
    min_interval_s: float = Field(0.0, ge=0)
    jitter_s: float = Field(0.0, ge=0)


class PaceSection(_Section):
    """An account's budget of result pages (services/crawler/budget.py), shared by every rank
    logged in as it and kept in Redis: caps per hour and per day (0: no cap), the least gap
    between two pages (spread out, not in bursts), a pause between a rank's searches, and
    cooldowns of the account after the site challenged it."""

    max_pages_per_hour: int = Field(0, ge=0)
    max_pages_per_day: int = Field(0, ge=0)
    min_page_gap_s: float = Field(0.0, ge=0)
    search_cooldown_s: float = Field(0.0, ge=0)
    # After a check the operator passed, after one nobody passed in time, after an interstitial.
    cooldown_after_challenge_s: float = Field(0.0, ge=0)
    cooldown_after_human_timeout_s: float = Field(0.0, ge=0)
    cooldown_after_interstitial_s: float = Field(0.0, ge=0)


class BrowserSection(_Section):
    # Leave out Chromium's automation switch and its navigator.webdriver flag.
    hide_automation: bool = False
    # Keep the browser's user-data directory per rank under the crawler's state directory, so
    # cookies and local storage survive restarts (instead of a fresh temporary one).
    persistent_user_data: bool = False


class SiteProfile(_Section):
    name: str
    base_url: str
    search: SearchSection
    results: ResultsSection
    scroll: ScrollSection = ScrollSection()
    login: LoginSection
    interstitial: InterstitialSection = InterstitialSection()
    soft_prompts: list[SoftPrompt] = []
    politeness: PolitenessSection = PolitenessSection()
    pace: PaceSection = PaceSection()
    browser: BrowserSection = BrowserSection()
    # The site's hostnames. Run against a stand-in (a base URL given by the operator), every
    # URL of the profile on one of these hosts moves under it: https://s.example.com/x ->
    # <base_url>/s.example.com/x (the demo shop's Taobao skin serves each host that way).
    hosts: list[str] = []
    # Headers sent with image downloads besides the browser's cookies and user agent.
    download_headers: dict[str, str] = {}
    # URL patterns (Chrome DevTools wildcards) the browser does not load, e.g. result pictures
    # that the crawler downloads itself. Leave empty for sites that watch for it.
    block_urls: list[str] = []
    # Pictures (and their redirects) may come from loopback, private or link-local addresses.
    # Off for sites on the internet: a result page must not steer the crawler at the
    # machine's own services or the cloud metadata address. On for a shop on this network.
    private_image_hosts: bool = False

    def with_base_url(self, base_url: str | None) -> "SiteProfile":
        if not base_url:
            return self
        base_url = base_url.rstrip("/")
        if not self.hosts:
            return self.model_copy(update={"base_url": base_url})
        pattern = re.compile(r"(?:https?:)?//(" + "|".join(map(re.escape, self.hosts)) + r")(?=[/?#\"]|$)")

        def move(value: object) -> object:
            if isinstance(value, str):
                return pattern.sub(lambda m: f"{base_url}/{m.group(1)}", value)
            if isinstance(value, list):
                return [move(v) for v in value]
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        data = move(self.model_dump())
        return SiteProfile.model_validate(data)

    def rewrite_image_url(self, url: str) -> str:
        for rule in self.results.image_url_rewrite:
            url = re.sub(rule.pattern, rule.replace, url)
        return url

    def expand(self, template: str, **values: object) -> str:
        return template.format(base_url=self.base_url.rstrip("/"), **values)

    def search_url(self, query: str, page_index: int) -> str:
        return self.expand(
            self.search.url,
            query=quote(query, safe=""),
            offset=page_index * self.search.page_size,
            page=page_index + 1,
        )


def resolve_profile_path(name_or_path: str) -> Path:
    """A bundled profile name, or the path of the operator's own TOML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml" or candidate.is_file() or "/" in name_or_path:
        if not candidate.is_file():
            raise ProfileError(f"site profile file not found: {candidate}")
        return candidate
    bundled = PROFILES_DIR / f"{name_or_path}.toml"
    if not bundled.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ProfileError(f"unknown site profile {name_or_path!r} (bundled: {known}; or a path)")
    return bundled


def load_profile(name_or_path: str, base_url: str | None = None) -> SiteProfile:
    path = resolve_profile_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    try:
        profile = SiteProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    return profile.with_base_url(base_url)
