"""A site profile of the operator's own (a TOML file given by path) that searches by typing
into the search box instead of opening the search URL."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.crawler.profile import PROFILES_DIR
from shared.image_validation import check_prepared
from tests.fixtures_crawler import log_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_form_search_with_a_profile_file(crawler_workers, crawl_client, shop, tmp_path: Path):
    text = (PROFILES_DIR / "shop.toml").read_text(encoding="utf-8")
    assert 'mode = "url"' in text
    own = tmp_path / "myshop.toml"
    own.write_text(text.replace('mode = "url"', 'mode = "form"').replace('name = "shop"', 'name = "myshop"'),
                   encoding="utf-8")
    crawler_workers(rank=6, profile=str(own))
    log_in(crawl_client, shop, 6)
    assert crawl_client.login_state(6).site == "myshop"
    searches = shop.count("home")
    request = crawl_client.submit("😀 红色 T恤", n_images=3, job_id="form", rank=6)
    result, = crawl_client.wait_results(request.reply_stream, 1)
    assert result.status == "ok", result.missing
    assert shop.count("home") > searches          # it went through the home page's form
    assert all("%F0%9F%98%80" in url for url in result.image_urls)   # the emoji was typed in
    for image in result.images:
        check_prepared(image)
