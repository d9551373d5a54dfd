"""Synthetic product pictures and captions (torch-free): the demo data set and the shop's
result images come from here."""
from __future__ import annotations

from shared.synthetic.attributes import (
    CATEGORIES,
    COLOURS,
    PATTERNS,
    ProductAttrs,
    parse_query,
    random_attrs,
)
from shared.synthetic.captions import CAPTION_TEMPLATES, make_caption
from shared.synthetic.render import render_product

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "PATTERNS",
    "CAPTION_TEMPLATES",
    "ProductAttrs",
    "make_caption",
    "parse_query",
    "random_attrs",
    "render_product",
]
