"""What an image source hands the learner for one query (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

# Why a query of a batch brought no usable image. One name per reason, counted in events.
MissingReason = Literal[
    "failed",       # the crawler found nothing usable (search failed, every image failed)
    "late",         # no result within --online-wait-s of the batch needing it
    "not_cached",   # cache mode: the query was never crawled
    "leaked",       # every image was a near-duplicate of a gallery image (leakage guard)
    "no_login",     # live mode: no crawler rank logged in before the login timeout
]
MISSING_REASONS: tuple[str, ...] = get_args(MissingReason)


@dataclass
class Fetched:
    """The crawled images of one query, in crawl order (index = the crawled image number),
    as validated JPEG bytes; empty with ``reason`` set when there are none."""

    query: str
    images: list[bytes] = field(default_factory=list)
    reason: str | None = None
    from_cache: bool = False
    # Images removed by the leakage guard as near-copies of gallery images (not in ``images``).
    dropped_leaked: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.images)
