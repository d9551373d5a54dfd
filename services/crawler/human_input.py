"""Input the way a person gives it: pointer moves, presses and releases, wheel turns and key
strokes, dispatched through the Chrome DevTools Protocol (``Input.dispatchMouseEvent``,
``Input.dispatchKeyEvent``), so the page sees trusted events (``isTrusted``) at real
coordinates instead of a script's ``value=`` and ``click()``.

Coordinates are CSS pixels of the top-level viewport. The operator's relayed pointer and keys
(:mod:`services.crawler.operator_relay`) go through the same calls.
"""
from __future__ import annotations

import random
import time
from typing import Any

from selenium.common.exceptions import WebDriverException

# Keys with a meaning of their own besides text: (key, code, Windows virtual key code).
SPECIAL_KEYS: dict[str, tuple[str, str, int]] = {
    "Enter": ("Enter", "Enter", 13),
    "Backspace": ("Backspace", "Backspace", 8),
    "Tab": ("Tab", "Tab", 9),
    "Escape": ("Escape", "Escape", 27),
    "Delete": ("Delete", "Delete", 46),
    "ArrowLeft": ("ArrowLeft", "ArrowLeft", 37),
    "ArrowUp": ("ArrowUp", "ArrowUp", 38),
    "ArrowRight": ("ArrowRight", "ArrowRight", 39),
    "ArrowDown": ("ArrowDown", "ArrowDown", 40),
    "PageDown": ("PageDown", "PageDown", 34),
    "PageUp": ("PageUp", "PageUp", 33),
    "Home": ("Home", "Home", 36),
    "End": ("End", "End", 35),
}
MOUSE_BUTTONS = ("left", "middle", "right")
# Modifier bits of CDP input events.
CTRL = 2

# The centre of an element in viewport coordinates, after bringing it into view without a
# jump (the caller scrolls with the wheel when it is far away).
_RECT_JS = """
const r = arguments[0].getBoundingClientRect();
return {x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width, h: r.height,
        vw: window.innerWidth, vh: window.innerHeight};
"""


class InputUnavailable(RuntimeError):
    """The browser offers no DevTools input (e.g. a remote grid that does not pass CDP)."""


class HumanInput:
    def __init__(self, driver: Any, rng: random.Random | None = None,
                 key_delay_s: tuple[float, float] = (0.04, 0.14)):
        self.driver = driver
        self.rng = rng or random.Random()
        self.key_delay_s = key_delay_s
        self._x = 0.0
        self._y = 0.0

    def _cdp(self, method: str, params: dict[str, Any]) -> Any:
        if not hasattr(self.driver, "execute_cdp_cmd"):
            raise InputUnavailable("this browser does not accept DevTools input events")
        return self.driver.execute_cdp_cmd(method, params)

    # ---- the pointer --------------------------------------------------------------------
    def mouse(self, kind: str, x: float, y: float, button: str = "none", buttons: int = 0,
              click_count: int = 0, modifiers: int = 0) -> None:
        """One pointer event: kind is mouseMoved, mousePressed or mouseReleased."""
        self._cdp("Input.dispatchMouseEvent", {
            "type": kind, "x": float(x), "y": float(y), "button": button, "buttons": buttons,
            "clickCount": click_count, "modifiers": modifiers, "pointerType": "mouse"})
        self._x, self._y = float(x), float(y)

    def move_to(self, x: float, y: float, steps: int = 8) -> None:
        """A path, not a jump, from where the pointer was."""
        x0, y0 = self._x, self._y
        for i in range(1, steps + 1):
            t = i / steps
            self.mouse("mouseMoved", x0 + (x - x0) * t + self.rng.uniform(-0.6, 0.6),
                       y0 + (y - y0) * t + self.rng.uniform(-0.6, 0.6))
            time.sleep(self.rng.uniform(0.005, 0.02))
        self.mouse("mouseMoved", x, y)

    def click_at(self, x: float, y: float) -> None:
        self.move_to(x, y)
        self.mouse("mousePressed", x, y, "left", 1, 1)
        time.sleep(self.rng.uniform(0.04, 0.11))
        self.mouse("mouseReleased", x, y, "left", 0, 1)

    def wheel(self, delta_y: float, x: float | None = None, y: float | None = None) -> None:
        self._cdp("Input.dispatchMouseEvent", {
            "type": "mouseWheel", "x": float(self._x if x is None else x),
            "y": float(self._y if y is None else y), "deltaX": 0.0, "deltaY": float(delta_y),
            "pointerType": "mouse"})

    def element_box(self, element: Any) -> dict[str, float]:
        return dict(self.driver.execute_script(_RECT_JS, element))

    def bring_into_view(self, element: Any, rounds: int = 30) -> dict[str, float]:
        """Turns the wheel until the element's centre is inside the viewport."""
        box = self.element_box(element)
        for _ in range(rounds):
            if 0 < box["y"] < box["vh"] and 0 <= box["x"] <= box["vw"]:
                break
            middle = box["vh"] / 2
            step = max(-box["vh"] * 0.8, min(box["vh"] * 0.8, box["y"] - middle))
            self.wheel(step, box["vw"] / 2, middle)
            time.sleep(self.rng.uniform(0.08, 0.16))
            box = self.element_box(element)
        return box

    def click_element(self, element: Any) -> None:
        box = self.bring_into_view(element)
        # Somewhere inside, not always the exact centre.
        x = box["x"] + self.rng.uniform(-0.2, 0.2) * box["w"]
        y = box["y"] + self.rng.uniform(-0.2, 0.2) * box["h"]
        self.click_at(x, y)

    # ---- keys ---------------------------------------------------------------------------
    def key(self, name: str, modifiers: int = 0, commands: list[str] | None = None) -> None:
        """A named key (SPECIAL_KEYS) or a single printable character, pressed and released."""
        if name in SPECIAL_KEYS:
            key, code, vk = SPECIAL_KEYS[name]
            text = "\r" if name == "Enter" else ""
        elif len(name) == 1 and name.isascii() and name.isalnum():
            key, code, vk, text = name, f"Key{name.upper()}" if name.isalpha() else f"Digit{name}", \
                ord(name.upper()), name
        else:
            raise ValueError(f"not a key name: {name!r}")
        down: dict[str, Any] = {"type": "keyDown" if text and not modifiers else "rawKeyDown",
                                "key": key, "code": code, "windowsVirtualKeyCode": vk,
                                "modifiers": modifiers}
        if text and not modifiers:
            down["text"] = down["unmodifiedText"] = text
        if commands:
            down["commands"] = commands
        self._cdp("Input.dispatchKeyEvent", down)
        self._cdp("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                              "windowsVirtualKeyCode": vk, "modifiers": modifiers})

    def type_text(self, text: str) -> None:
        """Each character as its own key stroke (any character, CJK and emoji included)."""
        for char in text:
            if char.isascii() and char.isalnum():
                self.key(char)
            else:
                self._cdp("Input.dispatchKeyEvent", {"type": "keyDown", "text": char,
                                                      "unmodifiedText": char, "key": char})
                self._cdp("Input.dispatchKeyEvent", {"type": "keyUp", "key": char})
            time.sleep(self.rng.uniform(*self.key_delay_s))

    def clear_focused(self) -> None:
        """Selects what the focused box holds and deletes it, as Ctrl+A, Backspace."""
        self.key("a", modifiers=CTRL, commands=["selectAll"])
        self.key("Backspace")


def available(driver: Any) -> bool:
    """True when the browser takes DevTools input (a local Chromium; not every remote grid)."""
    if not hasattr(driver, "execute_cdp_cmd"):
        return False
    try:
        driver.execute_cdp_cmd("Input.setIgnoreInputEvents", {"ignore": False})
        return True
    except WebDriverException:
        return False
