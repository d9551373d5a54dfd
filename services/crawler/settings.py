"""Crawler settings, read from the environment (prefix ``CNCLIP_CRAWLER_``).

The Redis URL and the data root come from ``shared.settings.CommonSettings`` (also accepted
under the names every service shares, ``CNCLIP_REDIS_URL`` and ``CNCLIP_DATA_ROOT``).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.image_validation import ImageRules
from shared.settings import CommonSettings


class CrawlerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="CNCLIP_CRAWLER_", extra="ignore")

    # Private state of the crawler (cookies: keys to the shop account). Kept out of the data
    # root, where jobs write their outputs. Default: ~/.local/state/cnclip-crawler.
    data_dir: Path | None = None

    # Site profile: a bundled name ("taobao", "shop") or the path of a TOML file.
    profile: str = "shop"
    # Overrides the profile's base_url (the shop runs wherever it was started).
    base_url: str | None = None

    # Rank of this worker's browser session; None claims a free rank in Redis.
    rank: int | None = Field(None, ge=0)
    max_ranks: int = Field(64, ge=1)
    rank_claim_ttl_s: int = Field(30, ge=5)

    # Browser backend: headed Chromium under Xvfb, headless Chromium, or a remote WebDriver.
    browser_mode: Literal["xvfb", "headless", "remote"] = "xvfb"
    remote_url: str | None = None
    chromium_path: Path = Path("/usr/bin/chromium")
    chromedriver_path: Path = Path("/usr/bin/chromedriver")
    window_width: int = 1366
    window_height: int = 900
    page_load_timeout_s: float = 30.0
    # Extra Chromium switches, space separated (e.g. a proxy).
    extra_browser_args: str = ""
    # A fresh browser after this many queries bounds Chromium's memory growth (0: never).
    browser_max_queries: int = Field(1000, ge=0)

    # Login: one login shared by every rank (the cookie file on a common volume).
    share_login: bool = False
    login_poll_s: float = Field(1.0, gt=0)

    # Politeness overrides (None: the profile's values).
    min_interval_s: float | None = Field(None, ge=0)
    jitter_s: float | None = Field(None, ge=0)

    # Downloads and images.
    download_timeout_s: float = Field(15.0, gt=0)
    download_attempts: int = Field(3, ge=1)
    download_backoff_s: float = Field(0.5, ge=0)
    download_concurrency: int = Field(4, ge=1)
    extra_candidates: int = Field(2, ge=0, description="URLs tried beyond n to replace failures")
    image_size: int = Field(224, ge=0, description="shorter side after resizing")
    min_image_side: int = Field(64, ge=1)
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=10_000)
    max_image_side: int = Field(20_000, ge=64, description="longer side; refused before decoding")
    max_image_aspect: float = Field(25.0, ge=1.0, description="longer side / shorter side")
    parallel_decodes: int = Field(1, ge=1, description="pictures decoded at once (bounds memory)")
    jpeg_quality: int = Field(90, ge=30, le=100)

    # Celery: no lost work.
    task_time_limit_s: int = Field(600, ge=5, description="hard limit of one crawl task")
    visibility_timeout_s: int = Field(
        3600, description="unacked tasks of a dead worker return after this; > task time limit"
    )
    unacked_restore_interval_s: int = Field(2, ge=1)
    unacked_restore_throttle: int = Field(1, ge=1)
    done_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long duplicates are recognised")
    failures_maxlen: int = Field(200_000, ge=100)

    @model_validator(mode="after")
    def _check(self) -> "CrawlerSettings":
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "visibility_timeout_s must be longer than task_time_limit_s, otherwise a task "
                "still running is handed to a second worker"
            )
        if self.browser_mode == "remote" and not self.remote_url:
            raise ValueError("browser_mode 'remote' needs CNCLIP_CRAWLER_REMOTE_URL")
        return self

    @property
    def state_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else default_state_dir()

    @property
    def soft_time_limit_s(self) -> int:
        """Leaves time to push a 'failed' result before the hard limit kills the task."""
        return max(1, self.task_time_limit_s - max(2, self.task_time_limit_s // 10))

    def image_rules(self) -> ImageRules:
        return ImageRules(
            min_side=self.min_image_side,
            max_pixels=self.max_image_pixels,
            max_bytes=self.max_image_bytes,
            max_side=self.max_image_side,
            max_aspect=self.max_image_aspect,
            target_short_side=self.image_size,
            jpeg_quality=self.jpeg_quality,
        )


def default_state_dir() -> Path:
    """The XDG state folder of the user running the crawler (never inside the data root)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cnclip-crawler"


@lru_cache(maxsize=1)
def get_settings() -> CrawlerSettings:
    return CrawlerSettings()
