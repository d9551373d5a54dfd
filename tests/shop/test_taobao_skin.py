"""The shop's Taobao-like skin over real HTTP: paths named after Taobao's hosts, the login
variants, async result pages with drifting class names, thumbnails and originals, and the
rate cap that brings the slider. (The taobao crawler profile runs against it in
tests/crawler/test_taobao_profile.py.)"""
from __future__ import annotations

import io
import json
import re

import httpx
import pytest
from PIL import Image

from services.shop.sessions import qr_payload
from services.shop.taobao_skin import qr_matrix, query_key, query_of_key
from tests.fixtures_shop import ShopServer
from tests.shop.pages import soup

QUERY = "红色条纹T恤"


@pytest.fixture()
def tb(shop):
    """A client of the skin with its switches back to the start."""
    httpx.delete(shop.url("/_test/taobao")).raise_for_status()
    with httpx.Client(base_url=shop.base_url, follow_redirects=False, timeout=60.0) as http:
        yield http
    httpx.delete(shop.url("/_test/taobao")).raise_for_status()


def switches(client: httpx.Client, **changes) -> httpx.Response:
    return client.post("/_test/taobao", json=changes)


def log_in(shop: ShopServer, client: httpx.Client) -> None:
    page = client.get("/login.taobao.com/member/login.jhtml", params={"redirectURL": "/i.taobao.com/my_itaobao"})
    token = soup(page).select_one(".qrcode-img")["data-token"]
    assert shop.confirm(token).status_code == 200
    done = client.get(f"/login.taobao.com/qr/{token}/complete", params={"redirectURL": "/i.taobao.com/my_itaobao"})
    assert done.status_code == 302 and done.headers["location"] == "/i.taobao.com/my_itaobao"


def test_guest_is_sent_to_a_login_page_with_hidden_captcha_markup(shop, tb):
    home = tb.get("/www.taobao.com/")
    # The box is drawn by the page's script after loading (not in the document), into a form
    # that opens the results in a new tab.
    assert soup(home).select_one("input#q") is None
    assert soup(home).select_one("#J_SearchForm") is not None
    assert "form.target = '_blank'" in home.text and "e.isTrusted" in home.text
    assert {"cookie2", "_tb_token_"} <= set(tb.cookies)        # guests get these too

    search = tb.get("/s.taobao.com/search", params={"q": QUERY})
    assert search.status_code == 302 and search.headers["location"].startswith("/login.taobao.com/member/login.jhtml")
    page = soup(tb.get(search.headers["location"]))
    hidden = page.select_one("#login #nocaptcha-password.nc-container")
    assert hidden is not None and "display:none" in hidden["style"] and hidden.select_one("#nc_1_wrapper")
    # Password view first; the QR view (a canvas) is hidden until switched to.
    assert "hidden" not in page.select_one(".login-password")["class"]
    assert "hidden" in page.select_one(".qrcode-login")["class"]
    assert page.select_one("#login .view-type-qrcode i") is not None
    assert page.select_one(".qrcode-img canvas") is not None
    assert tb.get("/i.taobao.com/my_itaobao").status_code == 302

    switches(tb, login_variant="qr_first")
    page = soup(tb.get(search.headers["location"]))
    assert "hidden" not in page.select_one(".qrcode-login")["class"]


def test_qr_login_sets_the_cookies_of_a_logged_in_visitor(shop, tb):
    log_in(shop, tb)
    assert {"unb", "_nk_", "tracknick", "cnclip_shop_session"} <= set(tb.cookies)
    assert tb.get("/i.taobao.com/my_itaobao").status_code == 200
    # The code on the canvas is the shop's login payload, drawn by the page's script.
    tb.cookies.clear()
    page = tb.get("/login.taobao.com/member/login.jhtml").text
    rows = json.loads(re.search(r"var matrix = (\[.*?\]);", page).group(1))
    token = soup(httpx.Response(200, text=page)).select_one(".qrcode-img")["data-token"]
    assert rows == qr_matrix(qr_payload(token))


def test_iframe_login_and_soft_reauth(shop, tb):
    switches(tb, login_variant="iframe")
    page = soup(tb.get("/s.taobao.com/search", params={"q": QUERY}))
    frame = page.select_one(".J_MIDDLEWARE_FRAME_WIDGET iframe[src*='login.taobao.com']")
    assert frame is not None and "style=mini" in frame["src"]
    assert page.select_one("#content_items_wrapper") is None
    mini = soup(tb.get(frame["src"]))
    assert "hidden" not in mini.select_one(".qrcode-login")["class"]

    log_in(shop, tb)
    switches(tb, soft_reauth=1)
    again = tb.get("/s.taobao.com/search", params={"q": QUERY})
    assert "quick=1" in again.headers["location"]
    quick = soup(tb.get(again.headers["location"]))
    button = quick.select_one("a.fm-button")
    assert button.get_text() == "快速进入"
    back = tb.get(button["href"])
    assert back.status_code == 302 and back.headers["location"].startswith("/s.taobao.com/search")
    assert tb.get("/s.taobao.com/search", params={"q": QUERY},
                  headers={"Referer": shop.url("/www.taobao.com/")}).status_code == 200


def test_results_come_from_the_api_with_thumbnails_and_originals(shop, tb):
    log_in(shop, tb)
    page = tb.get("/s.taobao.com/search", params={"q": QUERY, "page": "3"},
                  headers={"Referer": shop.url("/www.taobao.com/")})
    shell = soup(page)
    assert shell.select_one("#content_items_wrapper") is not None
    assert shell.select("#content_items_wrapper a") == []         # cards come later
    assert shell.select_one("#baxia-dialog-content")["style"] == "display: none"
    suffix = tb.get("/_test/taobao").json()["class_suffix"]
    assert f"doubleCardWrapperAdapt--{suffix}" in page.text

    first = tb.get("/s.taobao.com/api/items", params={"q": QUERY, "page": 1}).json()
    assert len(first["items"]) == 48 and first["pages"] == 3
    last = tb.get("/s.taobao.com/api/items", params={"q": QUERY, "page": 3}).json()
    assert len(last["items"]) == 100 - 96
    kinds = {"webp": 0, "avif": 0}
    for item in first["items"][:4]:
        pic = item["pic"]
        assert re.fullmatch(r"/g-search1\.alicdn\.com/img/bao/uploaded/i4/[\w-]+/\d+\.jpg_360x360q90\.jpg_\.(webp|avif)", pic)
        thumb = tb.get(pic)
        kind = pic.rsplit(".", 1)[1]
        kinds[kind] += 1
        assert thumb.headers["content-type"] == f"image/{kind}"
        assert Image.open(io.BytesIO(thumb.content)).format == kind.upper()
        original = tb.get(pic.split(".jpg_", 1)[0] + ".jpg")
        assert original.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(original.content)).format == "JPEG"
    assert kinds["webp"] and kinds["avif"]
    assert tb.get("/g-search1.alicdn.com/img/bao/uploaded/i4/" + query_key("别的") + "/123.jpg").status_code == 404
    assert query_of_key(query_key(QUERY)) == QUERY

    switches(tb, empty_results=1)
    assert tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()["items"] == []


HAND = {"trusted_moves": 24, "untrusted": 0, "off_track": 0, "duration_ms": 640.0, "reached_end": True}


def test_rate_cap_brings_the_slider_which_only_a_hands_drag_lifts(shop, tb):
    log_in(shop, tb)
    switches(tb, page_cap=2)
    for _ in range(2):
        assert tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()["items"]
    blocked = tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()
    assert "/_____tmd_____/punish?" in blocked["punish"] and blocked["challenge"] == "dialog"
    punish = tb.get(blocked["punish"])
    assert soup(punish).select_one("#nc_1_wrapper") is not None
    assert "e.isTrusted" in punish.text             # the knob is drawn by script, trusting only a hand
    assert tb.get("/s.taobao.com/_____tmd_____/punish/status").json() == {"blocked": True}
    assert "punish" in tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()   # stays
    solve = "/s.taobao.com/_____tmd_____/punish/solve"
    # A script's drag (untrusted events), a jump, a drag off the track: refused.
    for bad in ({"untrusted": 3}, {"trusted_moves": 1}, {"off_track": 2}, {"reached_end": False},
                {"duration_ms": 5.0}):
        assert tb.post(solve, json={**HAND, **bad}).json() == {"solved": False}
    assert tb.post(solve).status_code == 422
    assert tb.get("/s.taobao.com/_____tmd_____/punish/status").json() == {"blocked": True}
    assert tb.post(solve, json=HAND).json() == {"solved": True}
    assert tb.get("/s.taobao.com/_____tmd_____/punish/status").json() == {"blocked": False}
    assert tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()["items"]
    assert tb.post("/_test/taobao/solve-all").status_code in (404, 405)   # nothing else lifts it

    switches(tb, busy_dialog=1, page_cap=0)
    assert tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()["busy"] == "访问太频繁"
    assert tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()["busy"] is None


def test_per_account_limit_answers_with_the_frequency_dialog(shop, tb):
    log_in(shop, tb)
    switches(tb, busy_cap=2, page_cap=0, busy_text="操作太频繁", busy_close="button")
    for _ in range(2):
        assert tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()["busy"] is None
    third = tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()
    assert third["busy"] == "操作太频繁" and third["busy_close"] == "button" and third["items"]


def test_a_direct_search_url_is_a_risk_signal_and_each_challenge_form(shop, tb):
    log_in(shop, tb)
    home = shop.url("/www.taobao.com/")
    ok = tb.get("/s.taobao.com/search", params={"q": QUERY}, headers={"Referer": home})
    assert ok.status_code == 200 and soup(ok).select_one("#content_items_wrapper") is not None
    assert tb.get("/s.taobao.com/_____tmd_____/punish/status").json() == {"blocked": False}
    # Straight to the search URL (no page of the site before it): the slider follows.
    tb.get("/s.taobao.com/search", params={"q": QUERY})
    assert tb.get("/s.taobao.com/_____tmd_____/punish/status").json() == {"blocked": True}
    assert "punish" in tb.get("/s.taobao.com/api/items", params={"q": QUERY}).json()
    # The other forms of the same slider, at the search URL itself.
    switches(tb, challenge="page")
    page = tb.get("/s.taobao.com/search", params={"q": QUERY}, headers={"Referer": home})
    assert page.status_code == 302 and "/_____tmd_____/punish?" in page.headers["location"]
    top = tb.get(page.headers["location"])
    assert "<title>验证码拦截</title>" in top.text and "/s.taobao.com/search?q=" in top.text
    switches(tb, challenge="inline")
    inline = tb.get("/s.taobao.com/search", params={"q": QUERY}, headers={"Referer": home})
    assert inline.status_code == 200 and "<title>验证码拦截</title>" in inline.text
    switches(tb, challenge="unrendered")
    late = tb.get("/s.taobao.com/search", params={"q": QUERY}, headers={"Referer": home})
    assert "验证码拦截" not in late.text and "setTimeout(draw, 3000)" in late.text
    assert soup(late).select_one(".nc-container #nc_1_n1z") is None   # the knob comes later
    assert tb.post("/s.taobao.com/_____tmd_____/punish/solve", json=HAND).json() == {"solved": True}
    switches(tb, challenge="dialog")
    assert soup(tb.get("/s.taobao.com/search", params={"q": QUERY}, headers={"Referer": home})
                ).select_one("#content_items_wrapper") is not None


def test_bad_switches_are_refused(shop, tb):
    response = switches(tb, login_variant="sms")
    assert response.status_code == 422 and "login_variant" in response.text
    assert switches(tb, nonsense=1).status_code == 422
    assert tb.get("/_test/taobao").json()["login_variant"] == "password_first"


def test_class_names_change_with_every_start():
    suffixes = []
    for _ in range(2):
        with ShopServer() as server:
            suffixes.append(httpx.get(server.url("/_test/taobao")).json()["class_suffix"])
    assert suffixes[0] != suffixes[1]
