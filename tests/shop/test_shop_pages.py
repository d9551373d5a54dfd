"""The shop over real HTTP (uvicorn subprocess): pages, login, results and pictures."""
from __future__ import annotations

import io
import time
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from PIL import Image

from services.shop.catalog import Catalog
from services.shop.images import PictureStore
from services.shop.settings import ShopSettings
from tests.fixtures_shop import SESSION_COOKIE, ShopServer
from tests.shop.conftest import SHORT_QR_TTL_S, SHORT_SESSION_TTL_S
from tests.shop.pages import decode_qr, soup

QUERY = "红色条纹T恤"


def test_health_and_home_page_search_form(shop, client):
    assert client.get("/healthz").json() == {"status": "ok"}
    page = soup(client.get("/"))
    form = page.select_one("form#J_SearchForm")
    assert form is not None and form["action"] == "/search"
    assert form.select_one("input#q")["name"] == "q"
    assert form.select_one("button.btn-search") is not None
    assert page.select_one(".site-nav-login-info-nick") is None


def test_search_while_logged_out_redirects_to_login_with_the_original_url(shop, client):
    response = client.get("/search", params={"q": QUERY, "s": 44})
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert location.path == "/login"
    target = parse_qs(location.query)["redirect"][0]
    assert urlsplit(target).path == "/search"
    assert parse_qs(urlsplit(target).query) == {"q": [QUERY], "s": ["44"]}


def test_login_page_shows_a_decodable_qr_for_a_fresh_token(shop, client):
    page = soup(client.get("/login", params={"redirect": "/search?q=x"}))
    assert page.select_one("#J_QRStatus").get_text(strip=True) == "waiting"
    assert page.select_one(".J_QRCodeRefresh") is not None
    png = client.get(page.select_one("#J_QRCodeImg img")["src"])
    assert png.headers["content-type"] == "image/png"
    payload = decode_qr(png.content)
    prefix, token = payload.split(":", 1)
    assert prefix == "cnclip-shop-login"
    assert [(t["token"], t["state"], t["payload"]) for t in shop.tokens()] == [(token, "waiting", payload)]


def test_qr_confirm_then_complete_logs_in_with_an_httponly_cookie(shop, client):
    client.get("/login")
    token = shop.latest_token()
    assert client.get(f"/qr/{token}/status").json()["state"] == "waiting"
    assert shop.confirm(token).json() == {"state": "confirmed"}
    assert client.get(f"/qr/{token}/status").json()["state"] == "confirmed"

    done = client.get(f"/qr/{token}/complete", params={"redirect": f"/search?q={QUERY}"})
    assert done.status_code == 302
    assert unquote(done.headers["location"]) == f"/search?q={QUERY}"
    cookie = done.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "httponly" in cookie.lower()

    results = client.get("/search", params={"q": QUERY})
    assert results.status_code == 200
    assert soup(results).select_one(".site-nav-login-info-nick").get_text(strip=True)
    # A token logs in once only.
    with httpx.Client(base_url=shop.base_url) as other:
        again = other.get(f"/qr/{token}/complete", follow_redirects=False)
        assert again.status_code == 302 and again.headers["location"].startswith("/login")
        assert SESSION_COOKIE not in other.cookies


def test_login_redirect_stays_on_the_site(shop, client):
    client.get("/login")
    token = shop.latest_token()
    shop.confirm(token)
    done = client.get(f"/qr/{token}/complete", params={"redirect": "//evil.example/x"})
    assert done.headers["location"] == "/"


def test_unknown_token_is_refused(shop, client):
    assert shop.confirm("no-such-token").status_code == 404
    assert client.get("/qr/no-such-token/status").status_code == 404
    assert client.get("/qr/no-such-token.png").status_code == 404


def test_qr_code_expires_and_a_new_one_can_be_had(short_lived_shop):
    with httpx.Client(base_url=short_lived_shop.base_url, follow_redirects=False) as client:
        page = soup(client.get("/login", params={"redirect": "/search?q=a"}))
        token = page.select_one("#J_QRCodeImg")["data-token"]
        time.sleep(SHORT_QR_TTL_S + 0.2)
        assert client.get(f"/qr/{token}/status").json()["state"] == "expired"
        assert short_lived_shop.confirm(token).status_code == 410
        assert client.get(f"/qr/{token}/complete").headers["location"].startswith("/login")
        refreshed = soup(client.get(page.select_one(".J_QRCodeRefresh")["href"]))
        new_token = refreshed.select_one("#J_QRCodeImg")["data-token"]
        assert new_token != token
        assert client.get(f"/qr/{new_token}/status").json()["state"] == "waiting"


def test_sessions_expire_after_their_lifetime(short_lived_shop):
    with httpx.Client(base_url=short_lived_shop.base_url, follow_redirects=False) as client:
        started = time.monotonic()
        short_lived_shop.login(client)
        assert client.get("/search", params={"q": QUERY}).status_code == 200
        time.sleep(max(0.0, SHORT_SESSION_TTL_S - (time.monotonic() - started)) + 0.2)
        assert client.get("/search", params={"q": QUERY}).status_code == 302


def test_test_switches_can_be_turned_off(short_lived_shop):
    with httpx.Client(base_url=short_lived_shop.base_url) as client:
        for path in ("/_test/faults", "/_test/tokens", "/_test/stats"):
            assert client.get(path).status_code == 404
        assert client.post("/_test/reset").status_code == 404


def test_result_pages_dom_and_paging(shop, logged_in):
    first = soup(logged_in.get("/search", params={"q": QUERY}))
    items = first.select("#mainsrp-itemlist .item")
    assert len(items) == 44
    assert [int(i["data-index"]) for i in items] == list(range(44))
    for item in items:
        picture = item.select_one("img.J_ItemPic")
        assert picture["src"].startswith("data:image/")  # a placeholder until scrolled into view
        assert not picture.has_attr("data-src")
        assert QUERY in item.select_one(".title").get_text()
        assert float(item.select_one(".price strong").get_text()) > 0
        assert item.select_one(".shopname").get_text(strip=True)
        assert item.select_one("a.pic-link")["href"].startswith(f"/item/{item['data-nid']}")
    assert len({i["data-nid"] for i in items}) == 44
    next_href = first.select_one(".pager .next")["href"]
    assert parse_qs(urlsplit(next_href).query) == {"q": [QUERY], "s": ["44"]}

    last = soup(logged_in.get("/search", params={"q": QUERY, "s": 88}))
    assert [int(i["data-index"]) for i in last.select("#mainsrp-itemlist .item")] == list(range(88, 100))
    assert last.select_one(".pager .next") is None
    beyond = soup(logged_in.get("/search", params={"q": QUERY, "s": 100}))
    assert beyond.select_one(".empty-result") is not None
    assert beyond.select("#mainsrp-itemlist .item") == []
    assert logged_in.get("/search", params={"q": QUERY, "s": -1}).status_code == 422


def test_item_page(shop, logged_in):
    nid = soup(logged_in.get("/search", params={"q": QUERY})).select_one("#mainsrp-itemlist .item")["data-nid"]
    page = logged_in.get(f"/item/{nid}", params={"q": QUERY})
    assert page.status_code == 200 and QUERY in soup(page).select_one(".tb-main-title").get_text()
    assert logged_in.get(f"/item/{nid}", params={"q": "另一个"}).status_code == 404


def test_blank_query_finds_nothing(shop, logged_in):
    page = soup(logged_in.get("/search", params={"q": "   "}))
    assert page.select_one(".empty-result") is not None


def test_pictures_are_the_shared_renderers_drawings_of_the_query(shop, client):
    listed = shop.items(QUERY, count=100)
    assert listed["total"] == 100
    settings = ShopSettings()
    catalog = Catalog(seed=settings.seed, results_per_query=settings.results_per_query,
                      wrong_item_rate=settings.wrong_item_rate, max_query_chars=settings.max_query_chars)
    expected = PictureStore(catalog, size=settings.image_size, quality=settings.jpeg_quality, cache_items=0)
    for item in listed["items"][:4]:
        served = client.get(item["image_url"])
        assert served.headers["content-type"] == "image/jpeg"
        assert served.content == expected.jpeg(QUERY, item["index"])
        picture = Image.open(io.BytesIO(served.content))
        assert (picture.format, picture.size) == ("JPEG", (300, 300))
        picture.load()
    # Matching items show what the query names; about a fifth do not, as in a real search.
    named = catalog.picture_attrs(QUERY, 0)
    assert (named.colour, named.category, named.pattern) == ("red", "tshirt", "striped")
    wrong = [i["index"] for i in listed["items"] if i["wrong"]]
    assert 8 <= len(wrong) <= 35
    for index in range(100):
        attrs = catalog.picture_attrs(QUERY, index)
        matches = (attrs.colour, attrs.category, attrs.pattern) == ("red", "tshirt", "striped")
        assert matches == (index not in wrong)
    # The same picture every time, a different one for another item.
    first, second = listed["items"][0]["image_url"], listed["items"][1]["image_url"]
    assert client.get(first).content == client.get(first).content != client.get(second).content


def test_a_picture_of_another_query_is_not_found(shop, client):
    url = shop.items(QUERY)["items"][0]["image_url"]
    nid = urlsplit(url).path
    assert client.get(nid, params={"q": "蓝色杯子"}).status_code == 404
    assert client.get("/img/12.jpg", params={"q": QUERY}).status_code == 404


@pytest.mark.parametrize("raw", ["a/b/../c", "../../etc/passwd", "红色\x00T恤", "🎉粉色波点连衣裙😀", "蓝" * 500])
def test_awkward_queries_are_served_safely(shop, logged_in, raw):
    page = soup(logged_in.get("/search", params={"q": raw}))
    items = page.select("#mainsrp-itemlist .item")
    assert len(items) == 44
    shown = page.select_one("#mainsrp-itemlist")["data-q"]
    assert "\x00" not in shown and len(shown) <= 200
    picture = logged_in.get(f"/img/{items[0]['data-nid']}.jpg", params={"q": shown})
    assert picture.status_code == 200 and picture.content[:2] == b"\xff\xd8"


def test_stats_count_requests(shop, logged_in):
    before = shop.stats()["counts"]
    logged_in.get("/search", params={"q": QUERY})
    logged_in.get(shop.items(QUERY)["items"][0]["image_url"])
    after = shop.stats()
    assert after["counts"]["search"] == before.get("search", 0) + 1
    assert after["counts"]["search_served"] == before.get("search_served", 0) + 1
    assert after["counts"]["image"] == before.get("image", 0) + 1
    assert after["active_sessions"] == 1


def test_logged_in_visit_to_login_goes_straight_on(shop, logged_in):
    response = logged_in.get("/login", params={"redirect": "/search?q=x"})
    assert response.status_code == 302 and response.headers["location"] == "/search?q=x"


def test_a_bad_setting_stops_the_shop_with_a_clear_message():
    server = ShopServer(env={"CNCLIP_SHOP_PAGE_SIZE": "many"})
    with pytest.raises(RuntimeError, match="page_size"):
        server.start()
    assert server.proc.returncode == 2


def test_logging_in_again_gives_a_new_session(shop, logged_in):
    first = logged_in.cookies[SESSION_COOKIE]
    assert shop.login(logged_in) != first
    assert shop.stats()["active_sessions"] == 2
