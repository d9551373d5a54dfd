"""Profile additions that need no browser: hosts moved under a stand-in's base URL, image
URL rewrites, schema errors, and the page caps of one session."""
from __future__ import annotations

import pytest

from services.crawler.budget import AccountBudget, account_name
from services.crawler.profile import PROFILES_DIR, ProfileError, load_profile


def test_taobao_hosts_move_under_a_stand_in():
    real = load_profile("taobao")
    assert real.search.home_url == "https://www.taobao.com/"
    mirror = load_profile("taobao", base_url="http://127.0.0.1:8600/")
    assert mirror.base_url == "http://127.0.0.1:8600/www.taobao.com"
    assert mirror.search.home_url == "http://127.0.0.1:8600/www.taobao.com/"
    assert mirror.login.check_url == "http://127.0.0.1:8600/i.taobao.com/my_itaobao"
    assert mirror.search_url("裙子", 1).startswith("http://127.0.0.1:8600/s.taobao.com/search?page=2&q=")
    # Markers without a scheme still match the moved URLs.
    assert "login.taobao.com" in mirror.login.wall_url_contains
    # A profile without hosts only changes its base URL.
    assert load_profile("shop", base_url="http://x:1").search.url == "{base_url}/search?q={query}&s={offset}"


@pytest.mark.parametrize("found, original", [
    ("https://g-search1.alicdn.com/img/bao/uploaded/i4/i1/O1CN01x.jpg_360x360q90.jpg_.webp",
     "https://g-search1.alicdn.com/img/bao/uploaded/i4/i1/O1CN01x.jpg"),
    ("https://g-search1.alicdn.com/img/bao/uploaded/i2/O1CN01y.png_.avif",
     "https://g-search1.alicdn.com/img/bao/uploaded/i2/O1CN01y.png"),
    ("https://img.alicdn.com/imgextra/i3/O1CN01z.jpeg_460x460.jpg",
     "https://img.alicdn.com/imgextra/i3/O1CN01z.jpeg"),
    ("https://img.alicdn.com/imgextra/i3/O1CN01z.jpg", "https://img.alicdn.com/imgextra/i3/O1CN01z.jpg"),
])
def test_taobao_thumbnails_rewrite_to_the_original(found, original):
    assert load_profile("taobao").rewrite_image_url(found) == original


def test_taobao_never_asks_for_avif():
    profile = load_profile("taobao")
    assert "avif" not in profile.download_headers["Accept"]
    assert profile.browser.hide_automation and profile.browser.persistent_user_data
    assert profile.search.mode == "form" and profile.search.paging == "click"


def test_schema_errors_name_the_key(tmp_path):
    text = (PROFILES_DIR / "taobao.toml").read_text(encoding="utf-8")
    broken = tmp_path / "bad-regex.toml"
    broken.write_text(text.replace(r"pattern = '^(.*?\.(?:jpe?g|png))_[^/]*$'", "pattern = '(unclosed'"),
                      encoding="utf-8")
    with pytest.raises(ProfileError, match="not a regular expression"):
        load_profile(str(broken))
    wrong = tmp_path / "bad-paging.toml"
    wrong.write_text(text.replace('paging = "click"', 'paging = "scroll"'), encoding="utf-8")
    with pytest.raises(ProfileError, match="paging"):
        load_profile(str(wrong))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_accounts_page_budget_in_redis(redis_client):
    clock = FakeClock()
    account = {"name": "acct-1"}
    budget = AccountBudget(redis_client, lambda: account["name"], max_per_hour=2, max_per_day=3,
                           clock=clock)
    assert budget.reserve_page() == 0
    clock.now += 10
    assert budget.reserve_page() == 0
    # Two pages in the hour: the next waits until the first leaves the window, recording nothing.
    assert budget.reserve_page() == pytest.approx(3600 - 10)
    assert budget.last_reason == "2 pages per 1 h"
    assert budget.pages_in(3600) == 2
    # Another rank (or a restarted worker) on the same account shares the count.
    again = AccountBudget(redis_client, lambda: "acct-1", max_per_hour=2, max_per_day=3, clock=clock)
    assert again.reserve_page() == pytest.approx(3600 - 10)
    # Another account has its own.
    account["name"] = "acct-2"
    assert budget.reserve_page() == 0
    account["name"] = "acct-1"
    clock.now += 3600
    assert budget.reserve_page() == 0
    # Three in the day: the next waits for the first to be a day old.
    assert budget.reserve_page() == pytest.approx(24 * 3600 - 3610)
    assert budget.last_reason == "3 pages per 24 h"
    assert budget.describe() == "2 pages per 1 h, 3 pages per 24 h"


def test_pages_are_spread_out_and_an_account_cools_down(redis_client):
    clock = FakeClock()
    budget = AccountBudget(redis_client, lambda: "acct-gap", min_gap_s=180, clock=clock)
    assert budget.reserve_page() == 0
    clock.now += 30
    assert budget.reserve_page() == pytest.approx(150)     # no burst
    assert budget.last_reason == "the least gap between two pages"
    clock.now += 150
    assert budget.reserve_page() == 0
    budget.cool_down(600, "a check the operator passed")
    budget.cool_down(60, "an interstitial")                  # a shorter one does not shorten it
    clock.now += 500
    assert budget.reserve_page() == pytest.approx(100)
    assert budget.last_reason == "cooldown after a check the operator passed"
    clock.now += 100
    assert budget.reserve_page() == 0


def test_search_cooldown_and_the_account_name(redis_client):
    clock = FakeClock()
    budget = AccountBudget(redis_client, lambda: "acct-s", search_cooldown_s=20, clock=clock)
    assert budget.search_delay() == 0
    budget.record_search()
    clock.now += 5
    assert budget.search_delay() == pytest.approx(15)
    unlimited = AccountBudget(redis_client, lambda: "acct-free")
    assert [unlimited.reserve_page() for _ in range(5)] == [0] * 5 and unlimited.describe() == ""
    cookies = [{"name": "tracknick", "value": "shopper"}, {"name": "unb", "value": "2200/..:x"}]
    assert account_name(cookies, ["unb", "tracknick"], "taobao-rank0") == "2200_..:x".replace(":", "_")
    assert account_name(cookies[:1], ["unb", "tracknick"], "taobao-rank0") == "shopper"
    assert account_name([], ["unb"], "taobao-rank0") == "taobao-rank0"
