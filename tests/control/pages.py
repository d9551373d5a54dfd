"""What the page tests share: waiting for a job's panels, reading tables and charts as a person
sees them, and screenshots under the test's output for a person to look at."""
from __future__ import annotations

import os
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    """The whole page as a PNG under ``<tmp_path>/screenshots``, or under
    ``$CNCLIP_SCREENSHOT_DIR`` when set (pytest keeps only its last few temporary folders)."""
    out = Path(os.environ["CNCLIP_SCREENSHOT_DIR"]) if os.environ.get("CNCLIP_SCREENSHOT_DIR") else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    driver.set_window_size(max(1400, width), min(max(1000, height + 120), 4000))
    path = out / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    print(f"screenshot: {path}")
    return path


def wait_rendered(driver, job_id: str, timeout: float = 30.0, state: str | None = None) -> None:
    def rendered(d):
        root = d.find_element(By.ID, "status-root")
        return root.get_attribute("data-rendered") == job_id and (
            state is None or root.get_attribute("data-rendered-state") == state)
    WebDriverWait(driver, timeout).until(rendered)


def table_rows(driver, table_id: str) -> list[list[str]]:
    """The cells' text as shown, read in one script: the page redraws its tables every few
    seconds, so element by element reads could straddle two renderings."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr')).map(function (tr) {
          return Array.from(tr.querySelectorAll('td')).map(function (td) { return td.innerText.trim(); });
        });""", table_id)


def click_when_stable(driver, selector: str, timeout: float = 20.0) -> None:
    """Clicks an element of a table the page redraws, trying again if it was just replaced."""
    def click(d):
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
            return True
        except StaleElementReferenceException:
            return False
    WebDriverWait(driver, timeout).until(click)


def chart_points(driver, chart_id: str) -> list[int]:
    """Points drawn per line of a chart (0 lines when it shows its empty text)."""
    raw = driver.find_element(By.ID, chart_id).get_attribute("data-points") or ""
    return [int(v) for v in raw.split(",") if v]


def chart_has_canvas(driver, chart_id: str) -> bool:
    return bool(driver.find_elements(By.CSS_SELECTOR, f"#{chart_id} canvas"))


def visible_panels(driver) -> set[str]:
    return {p.get_attribute("id") for p in driver.find_elements(By.CSS_SELECTOR, ".job-panel") if p.is_displayed()}
