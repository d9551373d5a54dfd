"""Settings of the search service (environment prefix ``CNCLIP_SEARCH_``; the data root is
shared as ``CNCLIP_DATA_ROOT``). It trusts one credential: the control service's token
(``CNCLIP_CONTROL_TOKEN``), which the control service sends when it proxies ``/api/search``."""
from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings

DEFAULT_PORT = 8700


class SearchSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="CNCLIP_SEARCH_", extra="ignore", populate_by_name=True)

    # Loopback by default: only the control service (same machine or compose network) calls it.
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    control_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("control_token", "CNCLIP_SEARCH_CONTROL_TOKEN", "CNCLIP_CONTROL_TOKEN"))
    control_token_file: Path | None = Field(
        None, description="read the control token from this file (the control service's made-up token)")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    # Indexes and their models kept loaded together; the least recently used go first.
    memory_budget_mb: int = Field(4096, ge=1)
    thumb_size: int = Field(192, ge=16, le=1024, description="longer side of a thumbnail, in pixels")
    thumb_cache: int = Field(4096, ge=0, description="thumbnails kept in memory")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    threads: int = Field(0, ge=0, le=256,
                         description="torch and FAISS threads (0: half the usable CPUs, at least 1; services/search/compute.py)")
    max_batch: int = Field(32, ge=1, le=1024, description="text queries encoded together at most")
    log_level: str = "info"

    @property
    def experiments(self) -> Path:
        from shared import layout

        return Path(self.data_root) / layout.EXPERIMENTS
