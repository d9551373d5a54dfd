"""The shop in a real headless Chromium: lazy pictures and the QR login, end to end."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.fixtures_shop import SESSION_COOKIE
from tests.helpers import headless_chromium
from tests.shop.pages import decode_qr

pytestmark = pytest.mark.browser
QUERY = "黄色格子帽子"


@pytest.fixture(scope="module")
def driver():
    profile = tempfile.mkdtemp(prefix="shop-chromium-")
    browser = headless_chromium(Path(profile), window="1280,900")
    yield browser
    browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(browser, seconds: float = 20.0) -> WebDriverWait:
    return WebDriverWait(browser, seconds, poll_frequency=0.05)


def lazy_sources(browser) -> list[str | None]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#mainsrp-itemlist .item img.J_ItemPic'))"
        ".map(function (img) { return img.getAttribute('data-src'); });")


def test_qr_login_in_the_browser(shop, driver):
    driver.delete_all_cookies()
    driver.get(shop.url("/search", q=QUERY))
    wait(driver).until(lambda d: urlsplit(d.current_url).path == "/login")
    assert driver.find_element(By.ID, "J_QRStatus").text == "waiting"
    code = driver.find_element(By.CSS_SELECTOR, "#J_QRCodeImg img")
    wait(driver).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", code))

    payload = decode_qr(code.screenshot_as_png)
    assert payload.startswith("cnclip-shop-login:")
    token = payload.split(":", 1)[1]
    assert token in [t["token"] for t in shop.tokens()]

    assert shop.confirm(token).status_code == 200
    wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".site-nav-login-info-nick")))
    landed = urlsplit(driver.current_url)
    assert landed.path == "/search" and unquote(landed.query) == f"q={QUERY}"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#mainsrp-itemlist .item")) == 44
    cookie = driver.get_cookie(SESSION_COOKIE)
    assert cookie is not None and cookie["httpOnly"] is True
    # The page's script cannot read the session.
    assert SESSION_COOKIE not in driver.execute_script("return document.cookie")


def test_expired_code_offers_a_refresh(short_lived_shop, driver):
    driver.delete_all_cookies()
    driver.get(short_lived_shop.url("/login", redirect="/"))
    first = driver.find_element(By.ID, "J_QRCodeImg").get_attribute("data-token")
    refresh = driver.find_element(By.CSS_SELECTOR, ".J_QRCodeRefresh")
    assert not refresh.is_displayed()
    wait(driver).until(lambda d: d.find_element(By.ID, "J_QRStatus").text == "expired")
    assert refresh.is_displayed()
    refresh.click()
    wait(driver).until(lambda d: d.find_element(By.ID, "J_QRCodeImg").get_attribute("data-token") != first)
    assert driver.find_element(By.ID, "J_QRStatus").text == "waiting"


def test_pictures_get_their_address_only_when_scrolled_into_view(shop, driver):
    with httpx.Client(base_url=shop.base_url) as client:
        session = shop.login(client)
    driver.get(shop.url("/healthz"))
    driver.delete_all_cookies()
    driver.add_cookie({"name": SESSION_COOKIE, "value": session, "path": "/", "httpOnly": True})
    driver.get(shop.url("/search", q=QUERY))
    items = wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mainsrp-itemlist .item img.J_ItemPic"))
    assert len(items) == 44

    # Only what the first screen shows has an address; the rest keep the placeholder.
    wait(driver).until(lambda d: lazy_sources(d)[0] is not None)
    before = lazy_sources(driver)
    shown_first = [i for i, src in enumerate(before) if src is not None]
    assert 1 <= len(shown_first) < 20 and shown_first == list(range(len(shown_first)))
    assert items[-1].get_attribute("src").startswith("data:image/")

    expected = [unquote(i["image_url"]) for i in shop.items(QUERY)["items"]]
    for index, picture in enumerate(items):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
        wait(driver, 10).until(lambda d: picture.get_attribute("data-src") is not None)
        assert unquote(picture.get_attribute("data-src")) == expected[index]
    # The browser then loads the real picture.
    last = items[-1]
    wait(driver).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", last) == 300)
