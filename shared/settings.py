"""Settings shared by every service, read from the environment (prefix ``CNCLIP_``).

pydantic-settings gives typed parsing, defaults and a clear error for a bad value in one place;
each service extends :class:`CommonSettings` with its own fields.
"""
from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CNCLIP_", extra="ignore")

    # Redis is the only channel between services (Celery broker, result streams, state).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # DATAPATH of the prototype: pretrained_weights/, datasets/, experiments/, caches.
    data_root: Path = Path("./data")


def common_settings() -> CommonSettings:
    return CommonSettings()
