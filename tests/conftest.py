from __future__ import annotations

import pytest
import redis as redis_lib

from tests.helpers import RedisServer

# Fixtures of one area that other areas' tests use too (the shop, crawler workers, tiny data).
pytest_plugins = ["tests.fixtures_shop", "tests.fixtures_crawler", "tests.fixtures_trainer", "tests.fixtures_search"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real Redis for the whole test session (AOF on, as in production)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server) -> str:
    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture()
def redis_client(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()
