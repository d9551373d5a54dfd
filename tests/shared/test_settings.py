"""Every service's settings extend the common base: the shared fields are declared once and read
under the service's own prefix first, then under the name every service shares."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.control.settings import ControlSettings
from services.crawler.settings import CrawlerSettings
from services.shop.settings import ShopSettings
from services.trainer.runner.settings import RunnerSettings
from shared.settings import CommonSettings

SERVICES = [
    (ControlSettings, "CNCLIP_CONTROL_"),
    (CrawlerSettings, "CNCLIP_CRAWLER_"),
    (ShopSettings, "CNCLIP_SHOP_"),
    (RunnerSettings, "CNCLIP_RUNNER_"),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("CNCLIP_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("settings_cls,prefix", SERVICES)
def test_shared_names_configure_every_service(monkeypatch, tmp_path, settings_cls, prefix):
    monkeypatch.setenv("CNCLIP_REDIS_URL", "redis://shared:1/2")
    monkeypatch.setenv("CNCLIP_DATA_ROOT", str(tmp_path))
    settings = settings_cls()
    assert settings.redis_url == "redis://shared:1/2"
    assert settings.data_root == tmp_path


@pytest.mark.parametrize("settings_cls,prefix", SERVICES)
def test_the_service_prefix_wins_over_the_shared_name(monkeypatch, tmp_path, settings_cls, prefix):
    monkeypatch.setenv("CNCLIP_REDIS_URL", "redis://shared:1/2")
    monkeypatch.setenv(f"{prefix}REDIS_URL", "redis://own:3/4")
    monkeypatch.setenv(f"{prefix}DATA_ROOT", str(tmp_path / "own"))
    settings = settings_cls()
    assert settings.redis_url == "redis://own:3/4"
    assert settings.data_root == tmp_path / "own"


@pytest.mark.parametrize("settings_cls,prefix", SERVICES)
def test_defaults_and_arguments(monkeypatch, tmp_path, settings_cls, prefix):
    monkeypatch.setenv(f"{prefix}REDIS_URL", "redis://own:3/4")
    assert settings_cls().data_root == CommonSettings().data_root == Path("./data")
    assert settings_cls(redis_url="redis://arg:5/6").redis_url == "redis://arg:5/6"


def test_only_the_common_fields_are_read_under_the_shared_prefix(monkeypatch):
    """CNCLIP_PORT is nobody's variable: it must not move the control service or the shop."""
    monkeypatch.setenv("CNCLIP_PORT", "1234")
    monkeypatch.setenv("CNCLIP_CONTROL_PORT", "8123")
    assert ControlSettings().port == 8123
    assert ShopSettings().port == ShopSettings.model_fields["port"].default


def test_service_fields_keep_their_prefix(monkeypatch):
    monkeypatch.setenv("CNCLIP_SHOP_PAGE_SIZE", "12")
    monkeypatch.setenv("CNCLIP_RUNNER_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("CNCLIP_CRAWLER_PROFILE", "taobao")
    assert ShopSettings().page_size == 12
    assert RunnerSettings().max_attempts == 7
    assert CrawlerSettings().profile == "taobao"


@pytest.mark.parametrize("settings_cls,prefix", SERVICES)
def test_common_fields_are_declared_once(settings_cls, prefix):
    assert issubclass(settings_cls, CommonSettings)
    for name in CommonSettings.model_fields:
        assert name not in settings_cls.__annotations__, f"{settings_cls.__name__} redeclares {name}"


def test_a_bad_value_names_the_field(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("CNCLIP_CONTROL_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        ControlSettings()
