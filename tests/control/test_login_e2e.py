"""/login with a real crawler worker logging into the demo shop: the page shows the QR code the
browser took from the shop's login page, and turns green once the phone confirms it."""
from __future__ import annotations

import io

import pytest
import zxingcpp
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.control.conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_login_page_with_a_real_crawler(control, crawler_workers, shop, browser):
    crawler_workers(rank=0, mode="headless", wait_for=("waiting_for_scan",))
    sign_in(browser, control, "/login")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rank-0[data-state='waiting_for_scan'] img.qr"))
    img = browser.find_element(By.CSS_SELECTOR, "#rank-0 img.qr")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    # The card names the site the browser logs into and counts down the code's lifetime.
    assert browser.find_element(By.CSS_SELECTOR, "#rank-0 .site").text.startswith("logs into shop (127.0.0.1:")
    seconds_left = int(browser.find_element(By.CSS_SELECTOR, "#rank-0 .expiry").get_attribute("data-seconds-left"))
    assert 0 < seconds_left <= 115
    decoded = [r.text for r in zxingcpp.read_barcodes(Image.open(io.BytesIO(img.screenshot_as_png)))]
    assert len(decoded) == 1 and decoded[0].startswith("cnclip-shop-login:")
    token = decoded[0].split(":", 1)[1]
    # The phone scans the code shown on the control page (not one read from the shop).
    shop.confirm(token).raise_for_status()
    wait.until(lambda d: d.find_element(By.ID, "rank-0").get_attribute("data-state") == "logged_in")
    assert not browser.find_elements(By.CSS_SELECTOR, "#rank-0 img.qr")
