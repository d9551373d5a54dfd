"""Settings of the demo shop, read from the environment (prefix ``CNCLIP_SHOP_``; the common
fields of ``shared.settings.CommonSettings`` as in every service)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class ShopSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="CNCLIP_SHOP_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)

    # Search results
    page_size: int = Field(44, ge=1, le=200, description="items per result page (Taobao shows 44)")
    results_per_query: int = Field(100, ge=0, le=9999, description="total results of every query")
    wrong_item_rate: float = Field(
        0.2, ge=0.0, le=1.0, description="share of results that do not match the query, as in a real search"
    )
    seed: int = Field(0, description="changes every query's results and pictures")
    max_query_chars: int = Field(200, ge=1, description="longer queries are cut, as a search box does")

    # Result images
    image_size: int = Field(300, ge=16, le=2000)
    jpeg_quality: int = Field(85, ge=10, le=100)
    image_cache_items: int = Field(4096, ge=0, description="rendered JPEGs kept in memory (LRU)")

    # Login
    qr_token_ttl_s: float = Field(120.0, gt=0, description="a QR code expires when not scanned in time")
    qr_poll_ms: int = Field(500, ge=50, description="how often the login page asks whether it was scanned")
    session_ttl_s: float = Field(86400.0, gt=0, description="lifetime of a login session")
    session_cookie: str = "cnclip_shop_session"
    nick: str = "tb_demo_shopper"

    # Test switches under /_test/ (faults, QR tokens, session expiry): they can log a crawler
    # in, so they are off unless a test turns them on (CNCLIP_SHOP_TEST_ENDPOINTS=true).
    test_endpoints: bool = False

    # Fault payloads
    huge_image_bytes: int = Field(30_000_000, ge=1_000_000)
    bomb_side: int = Field(20_000, ge=1_000, le=60_000, description="declared side of the decompression bomb")
