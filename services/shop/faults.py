"""Faults the tests switch on in the shop (through ``/_test/faults``).

Counted faults (``search_error``, ``empty_results``, ``captcha``) take a number of upcoming
search requests: N > 0 hits the next N, -1 hits every one until cleared, 0 is off.
Image faults take an :class:`ItemSelector`: explicit result indexes (``{"items": [0, 2]}``)
or a share of items (``{"rate": 0.5}``) chosen by a stable hash of (fault, query, index), so a
test can predict which images break (``ItemSelector.matches``, or ``GET /_test/items``).
"""
from __future__ import annotations

import base64
import binascii
import threading
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.shop.catalog import stable_fraction

ImageFault = Literal["html", "truncated", "huge", "bomb"]
# When several image faults pick one item, the first in this order wins.
IMAGE_FAULTS: tuple[ImageFault, ...] = ("html", "truncated", "huge", "bomb")
COUNTED_FAULTS = ("search_error", "empty_results", "captcha")


class ItemSelector(BaseModel):
    """Which result items a fault hits: ``items`` (indexes in the query's full result list,
    0-based, across pages) or ``rate`` (a share of all items)."""

    model_config = ConfigDict(extra="forbid")
    items: list[int] | None = None
    rate: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_of(self) -> ItemSelector:
        if (self.items is None) == (self.rate is None):
            raise ValueError("give exactly one of 'items' or 'rate'")
        return self

    def matches(self, fault: str, query: str, index: int) -> bool:
        if self.items is not None:
            return index in self.items
        return stable_fraction("fault", fault, query, index) < (self.rate or 0.0)


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    page_delay_s: float = Field(0.0, ge=0, le=120, description="delay before every HTML page")
    image_delay_s: float = Field(0.0, ge=0, le=120, description="delay before every image")
    search_error: int = Field(0, ge=-1, description="next N searches answer HTTP 500")
    empty_results: int = Field(0, ge=-1, description="next N searches find nothing")
    captcha: int = Field(0, ge=-1, description="next N searches show the 'verify you are human' page")
    session_expire_after: int | None = Field(
        None, ge=0, description="N more searches are served, then every session expires"
    )
    image_html: ItemSelector | None = Field(None, description="an HTML page instead of the image")
    image_truncated: ItemSelector | None = Field(None, description="the JPEG cut in half")
    image_huge: ItemSelector | None = Field(None, description="a JPEG of huge_image_bytes")
    image_bomb: ItemSelector | None = Field(None, description="a small PNG declaring bomb_side x bomb_side pixels")
    pictures: dict[str, list[str]] | None = Field(
        None, description="query -> base64 JPEGs served as the pictures of its first results, in order")

    @field_validator("pictures")
    @classmethod
    def _base64(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for query, pictures in (value or {}).items():
            for i, text in enumerate(pictures):
                try:
                    base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    raise ValueError(f"pictures[{query!r}][{i}] is not base64") from None
        return value


class FaultBook:
    """The faults in force, updated by tests and consumed by request handlers (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()

    def current(self) -> Faults:
        with self._lock:
            return self._faults.model_copy()

    def update(self, changes: dict[str, Any]) -> Faults:
        """Applies the given fields (others stay); raises pydantic.ValidationError on bad input,
        leaving the faults as they were."""
        with self._lock:
            merged = Faults.model_validate({**self._faults.model_dump(), **changes})
            self._faults = merged
            return merged.model_copy()

    def clear(self) -> None:
        with self._lock:
            self._faults = Faults()

    def take(self, name: str) -> bool:
        """Whether the counted fault ``name`` hits this request (and counts it down)."""
        assert name in COUNTED_FAULTS, name
        with self._lock:
            left = getattr(self._faults, name)
            if left == 0:
                return False
            if left > 0:
                setattr(self._faults, name, left - 1)
            return True

    def session_expires_now(self) -> bool:
        """Called for each logged-in search: True when this one finds the sessions expired."""
        with self._lock:
            left = self._faults.session_expire_after
            if left is None:
                return False
            if left == 0:
                self._faults.session_expire_after = None
                return True
            self._faults.session_expire_after = left - 1
            return False

    def picture(self, query: str, index: int, clean: Callable[[str], str]) -> bytes | None:
        """The picture a test asked to serve for result ``index`` of ``query`` (queries
        compared after ``clean``), or None for the shop's own picture."""
        pictures = self.current().pictures or {}
        for key, served in pictures.items():
            if clean(key) == query and index < len(served):
                return base64.b64decode(served[index])
        return None

    def image_fault(self, query: str, index: int) -> ImageFault | None:
        faults = self.current()
        for kind in IMAGE_FAULTS:
            selector: ItemSelector | None = getattr(faults, f"image_{kind}")
            if selector is not None and selector.matches(kind, query, index):
                return kind
        return None
