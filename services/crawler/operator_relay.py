"""The operator in the loop: a check only a person can pass (the slider) is shown live to the
operator on control's /login, and the operator's pointer and keys come back over Redis and go
into this rank's browser as trusted input.

While the check lasts the rank publishes ``needs_human`` and, a few times a second, a JPEG of
its viewport with the check's region (:class:`~shared.messages.LiveFrame`) under a key that
expires within seconds; between frames it dispatches the operator's events in order through
:class:`~services.crawler.human_input.HumanInput`. When the page clears (or the wait ends)
the frame and any input left are deleted: nothing of the page outlives the check.
"""
from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Literal

import redis
from pydantic import ValidationError
from selenium.common.exceptions import WebDriverException

from services.crawler import human_input
from services.crawler.browser import BrowserSession
from services.crawler.human_input import HumanInput
from services.crawler.login import LoginStatePublisher
from shared import redis_keys
from shared.messages import LiveFrame, OperatorInput

log = logging.getLogger(__name__)

# A frame key outlives the frame interval a little, so a rank that died leaves no picture.
FRAME_TTL_S = 5
# How long input waits for the crawler before it is dropped.
INPUT_TTL_S = 30
# How often the page is asked whether the check is still there.
CHECK_EVERY_S = 0.5

# The first visible element of the check, in viewport coordinates, with a margin; the whole
# viewport when none is found.
_REGION_JS = """
const [sel, margin] = arguments;
const vw = window.innerWidth, vh = window.innerHeight;
let found = null;
try {
  found = Array.from(document.querySelectorAll(sel)).find(el => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden';
  });
} catch (e) {}
if (!found) return [0, 0, vw, vh, vw, vh];
const r = found.getBoundingClientRect();
const x = Math.max(0, Math.floor(r.left - margin)), y = Math.max(0, Math.floor(r.top - margin));
const right = Math.min(vw, Math.ceil(r.right + margin)), bottom = Math.min(vh, Math.ceil(r.bottom + margin));
return [x, y, Math.max(1, right - x), Math.max(1, bottom - y), vw, vh];
"""


class OperatorRelay:
    def __init__(self, client: redis.Redis, rank: int, session: BrowserSession,
                 publisher: LoginStatePublisher, frame_interval_s: float = 0.25,
                 jpeg_quality: int = 60):
        self.redis = client
        self.rank = rank
        self.session = session
        self.publisher = publisher
        self.frame_interval_s = frame_interval_s
        self.jpeg_quality = jpeg_quality

    def wait(self, deadline: float, wait_s: float, still_blocked: Callable[[], bool],
             region_selector: str, what: str = "a slider check") -> Literal["passed", "timeout"]:
        """Shows the page to the operator and relays their input until the check is gone,
        ``wait_s`` passed or the unix time ``deadline`` came."""
        driver = self.session.driver
        person = HumanInput(driver) if human_input.available(driver) else None
        challenge = secrets.token_hex(8)
        live_key = redis_keys.crawler_live(self.rank)
        input_key = redis_keys.crawler_operator_input(self.rank)
        self.redis.delete(input_key)
        region = self._region(region_selector)
        self._frame(challenge, 0, region)
        self.publisher.publish(
            "needs_human", f"the site shows {what}: open /login and pass it in the live view"
            + ("" if person else " (this browser takes no relayed input)"),
            qr_png=driver.get_screenshot_as_png())
        limit = min(deadline, time.time() + wait_s)
        seq, next_frame, next_check = 1, time.monotonic() + self.frame_interval_s, time.monotonic()
        pressed = False
        try:
            while time.time() < limit:
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + CHECK_EVERY_S
                    if not still_blocked():
                        log.info("the check is gone")
                        self.publisher.publish("logged_in", "", drop_qr=True)
                        return "passed"
                if now >= next_frame:
                    if seq % 8 == 0:  # the check may have moved (a knob drawn late, a resize)
                        region = self._region(region_selector)
                    self._frame(challenge, seq, region)
                    seq += 1
                    next_frame = now + self.frame_interval_s
                popped = self.redis.blpop([input_key], timeout=0.05)
                if popped is None:
                    continue
                batch = [popped[1]] + (self.redis.lpop(input_key, 200) or [])
                for raw in batch:
                    pressed = self._dispatch(person, raw, challenge, pressed)
            return "timeout"
        finally:
            self.redis.delete(live_key, input_key)

    # ---- the view ---------------------------------------------------------------------------
    def _region(self, selector: str) -> list[int]:
        try:
            return [int(v) for v in self.session.driver.execute_script(_REGION_JS, selector, 24)]
        except WebDriverException as exc:
            log.debug("no region for the live view: %s", exc.msg)
            return [0, 0, 1, 1, 1, 1]

    def _frame(self, challenge: str, seq: int, region: list[int]) -> None:
        driver = self.session.driver
        try:
            if hasattr(driver, "execute_cdp_cmd"):
                shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                    "format": "jpeg", "quality": self.jpeg_quality, "fromSurface": True})
                jpeg = base64.b64decode(shot["data"])
            else:
                jpeg = driver.get_screenshot_as_png()
        except WebDriverException as exc:
            log.debug("no live frame: %s", exc.msg)
            return
        x, y, w, h, vw, vh = region
        meta = LiveFrame(challenge=challenge, seq=seq, width=vw, height=vh, region=(x, y, w, h),
                         url=self._url())
        key = redis_keys.crawler_live(self.rank)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"jpeg": jpeg, "meta": meta.model_dump_json()})
        pipe.expire(key, FRAME_TTL_S)
        pipe.execute()

    def _url(self) -> str:
        try:
            return str(self.session.driver.current_url)[:300]
        except WebDriverException:
            return ""

    # ---- the hands --------------------------------------------------------------------------
    def _dispatch(self, person: HumanInput | None, raw: bytes | str, challenge: str,
                  pressed: bool) -> bool:
        """One relayed event into the browser; returns whether the button is held after it."""
        try:
            data = json.loads(raw)
            if data.get("challenge") != challenge:
                return pressed  # meant for an earlier check
            event = OperatorInput.model_validate(data.get("event"))
        except (ValueError, ValidationError, AttributeError) as exc:
            log.warning("operator input dropped: %s", exc)
            return pressed
        if person is None:
            return pressed
        try:
            if event.kind == "mousePressed":
                person.mouse("mousePressed", event.x, event.y, "left", 1, 1)
                return True
            if event.kind == "mouseReleased":
                person.mouse("mouseReleased", event.x, event.y, "left", 0, 1)
                return False
            if event.kind == "mouseMoved":
                person.mouse("mouseMoved", event.x, event.y, "left" if pressed else "none",
                             1 if pressed else 0)
            elif event.kind == "wheel":
                person.wheel(event.delta_y, event.x, event.y)
            elif event.kind == "key":
                person.key(event.key)
            elif event.kind == "text":
                person.type_text(event.text)
        except ValueError as exc:
            log.warning("operator input dropped: %s", exc)
        except WebDriverException as exc:
            log.warning("operator input not delivered: %s", exc.msg)
        return pressed
