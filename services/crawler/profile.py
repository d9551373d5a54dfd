"""Site profiles: everything that is particular to one shopping site, read from a TOML file.

Sites change their pages, so selectors live in a file the operator can copy and edit
(``CNCLIP_CRAWLER_PROFILE=/path/to/mysite.toml``) rather than in code. The bundled profiles
are in ``services/crawler/profiles/``. pydantic validates the file and names the offending key
when something is missing or mistyped.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    page_size: int = Field(44, ge=1)
    max_pages: int = Field(3, ge=1)


class ResultsSection(_Section):
    # The page is ready once one of these matches (results, empty notice, login, interstitial).
    ready: str
    item: str
    image: str
    # Attributes tried in order; the first one holding a real URL wins.
    image_attributes: list[str] = ["data-src", "src"]
    # Values that are not real images (lazy-load placeholders): URL substrings.
    placeholder_markers: list[str] = ["data:image", "placeholder", "blank.gif"]
    empty: str = ""
    next_page: str = ""


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
    logged_in: str = ""
    # A page that shows the login wall when logged out (probed when a worker starts).
    check_url: str = ""
    # A QR is re-taken at least this often even if nothing signals expiry.
    qr_max_age_s: float = Field(240.0, gt=0)


class InterstitialSection(_Section):
    selector: str = ""
    title_contains: list[str] = []
    url_contains: list[str] = []
    backoff_s: float = Field(30.0, ge=0)
    backoff_factor: float = Field(2.0, ge=1)
    max_retries: int = Field(2, ge=0)


class PolitenessSection(_Section):
    min_interval_s: float = Field(0.0, ge=0)
    jitter_s: float = Field(0.0, ge=0)


class SiteProfile(_Section):
    name: str
    base_url: str
    search: SearchSection
    results: ResultsSection
    scroll: ScrollSection = ScrollSection()
    login: LoginSection
    interstitial: InterstitialSection = InterstitialSection()
    politeness: PolitenessSection = PolitenessSection()
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
        return self.model_copy(update={"base_url": base_url.rstrip("/")})

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
