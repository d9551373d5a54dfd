"""The page classification script in real Chromium, on pages made to look like each form of
Taobao's checks: every form of the slider is 'human' (for the operator), the frequency dialog
in any wording is a prompt to close, and a query's own words in the title are no challenge."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

from services.crawler.page_kind import CLASSIFY_JS, classify_args
from services.crawler.profile import load_profile
from tests.helpers import headless_chromium

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def driver():
    profile = tempfile.mkdtemp(prefix="page-kind-")
    browser = headless_chromium(Path(profile))
    yield browser
    browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


def kind(driver, html: str, query: str = "", fragment: str = "", title_words=None) -> str:
    profile = load_profile("taobao")
    if title_words is not None:
        profile = profile.model_copy(update={"interstitial": profile.interstitial.model_copy(
            update={"title_contains": title_words})})
    driver.get("data:text/html;charset=utf-8," + quote(html) + fragment)
    return driver.execute_script(CLASSIFY_JS, *classify_args(profile, query))


def test_every_form_of_the_slider_is_for_the_operator(driver):
    knobless = '<div class="nc-container" id="nocaptcha"><div class="nc_wrapper">请按住滑块</div></div>'
    assert kind(driver, f"<title>淘宝网</title>{knobless}") == "human"
    assert kind(driver, "<title>验证码拦截</title><p>x</p>") == "human"
    assert kind(driver, "<title>x</title><p>x</p>", fragment="#/_____tmd_____/punish?x5secdata=1") == "human"
    dialog = '<div id="baxia-dialog-content" style="display:block;width:9px;height:9px"></div>'
    assert kind(driver, f"<title>红色_淘宝搜索</title>{dialog}") == "human"
    # The hidden captcha markup every login page carries is not a check.
    hidden = '<div id="nocaptcha-password" class="nc-container" style="display:none"></div>'
    assert kind(driver, f"<title>淘宝网</title>{hidden}") == "settled"


def test_the_frequency_dialog_in_any_wording_is_closed(driver):
    for text in ("访问太频繁", "操作太频繁", "请求过于频繁"):
        html = f'<div class="baxia-dialog">{text}<button class="J_close">关闭</button></div>'
        assert kind(driver, html) == "prompt:0", text


def test_a_querys_own_words_in_the_title_are_no_challenge(driver):
    words = ["验证", "安全"]
    page = "<title>安全帽_淘宝搜索</title><div id='content_items_wrapper'></div>"
    assert kind(driver, page, query="安全帽", title_words=words) == "settled"
    # The same title for another query: only then is it taken for an interstitial (and only
    # once the results' grace period has passed, which the crawler decides).
    assert kind(driver, page, query="红色 T恤", title_words=words) == "settled:title"
    cards = page + "<a id='item_id_1'>x</a>"
    assert kind(driver, cards, query="红色 T恤", title_words=words) == "results"
