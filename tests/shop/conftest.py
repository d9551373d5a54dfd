from __future__ import annotations

import httpx
import pytest

from tests.fixtures_shop import ShopServer

SHORT_QR_TTL_S = 2.5
SHORT_SESSION_TTL_S = 3.0


@pytest.fixture(scope="session")
def short_lived_shop():
    """A shop whose QR codes and sessions expire within seconds, with its test switches off
    (as a shop reachable by others would run)."""
    server = ShopServer(env={
        "CNCLIP_SHOP_QR_TOKEN_TTL_S": str(SHORT_QR_TTL_S),
        "CNCLIP_SHOP_SESSION_TTL_S": str(SHORT_SESSION_TTL_S),
        "CNCLIP_SHOP_QR_POLL_MS": "100",
        "CNCLIP_SHOP_TEST_ENDPOINTS": "false",
    }).start()
    yield server
    server.stop()


@pytest.fixture()
def client(shop):
    with httpx.Client(base_url=shop.base_url, follow_redirects=False, timeout=60.0) as http:
        yield http


@pytest.fixture()
def logged_in(shop, client):
    shop.login(client)
    return client

