"""Settings shared by every service, read from the environment.

pydantic-settings gives typed parsing, defaults and a clear error for a bad value in one place.
Each service extends :class:`CommonSettings` with its own fields and its own prefix
(``CNCLIP_CONTROL_``, ``CNCLIP_CRAWLER_``, ...). The fields declared here are read under the
service's prefix first (``CNCLIP_CRAWLER_REDIS_URL``) and then under the name every service
shares (``CNCLIP_REDIS_URL``), so one variable configures the whole stack and one service can
still be pointed elsewhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

SHARED_ENV_PREFIX = "CNCLIP_"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=SHARED_ENV_PREFIX, extra="ignore")

    # Redis is the only channel between services (Celery broker, result streams, state).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # DATAPATH of the prototype: pretrained_weights/, datasets/, experiments/, caches.
    data_root: Path = Path("./data")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: arguments, then the service's own prefix, then the shared names.
        return init_settings, env_settings, SharedEnvSource(settings_cls), dotenv_settings, file_secret_settings


class SharedEnvSource(EnvSettingsSource):
    """The fields of :class:`CommonSettings` under the shared prefix, whatever prefix the
    service's own fields use. Only those fields: ``CNCLIP_PORT`` must not set a service's port."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, env_prefix=SHARED_ENV_PREFIX)

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, value in super().__call__().items() if name in CommonSettings.model_fields}


def common_settings() -> CommonSettings:
    return CommonSettings()
