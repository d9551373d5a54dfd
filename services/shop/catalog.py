"""The shop's search results: every query has a fixed, reproducible list of items.

Nothing is stored: an item is a pure function of (seed, query, index), so any page, any item
and any image can be recomputed on demand and tests can predict what the shop will show.
"""
from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass

from shared.synthetic.attributes import ATTRIBUTE_NAMES, VOCABULARIES, ProductAttrs, parse_query, random_attrs

_SPACES = re.compile(r"\s+")
_INDEX_DIGITS = 4  # item ids end with the item's index, so results_per_query <= 9999
_TITLE_TAGS = ("2025新款", "包邮", "正品", "ins风", "百搭", "韩版", "爆款", "官方旗舰", "简约", "大码", "加厚", "清仓")
_SHOPS = ("优品生活馆", "潮流前线旗舰店", "简约家居专营店", "小鹿百货", "星河服饰", "木子良品", "晨光日用", "悦享购")
_LOCATIONS = ("浙江 杭州", "广东 广州", "江苏 苏州", "上海", "福建 泉州", "浙江 义乌", "北京", "广东 深圳")


def clean_query(text: str, max_chars: int) -> str:
    """What the search box keeps of the input: control and unpaired surrogate characters dropped,
    runs of whitespace collapsed, trimmed and cut to ``max_chars``."""
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in " \t\n")
    return _SPACES.sub(" ", text).strip()[:max_chars].strip()


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: the same in every process and every run (Python's
    own hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _stable_int(*parts: object) -> int:
    return int(stable_fraction(*parts) * 2**53)


@dataclass(frozen=True)
class Item:
    index: int  # position in the query's full result list, 0-based
    nid: str  # numeric item id, as Taobao's
    title: str
    price: str
    shop: str
    location: str
    sales: int
    wrong: bool  # does not match the query (shown anyway, as real searches do)


class Catalog:
    def __init__(self, *, seed: int, results_per_query: int, wrong_item_rate: float, max_query_chars: int):
        if results_per_query >= 10**_INDEX_DIGITS:
            raise ValueError(f"results_per_query must be below {10**_INDEX_DIGITS}")
        self.seed = seed
        self.results_per_query = results_per_query
        self.wrong_item_rate = wrong_item_rate
        self.max_query_chars = max_query_chars

    def clean(self, query: str) -> str:
        return clean_query(query, self.max_query_chars)

    def total(self, query: str) -> int:
        return self.results_per_query if query else 0

    # ---- item ids -------------------------------------------------------------------------
    def _query_number(self, query: str) -> int:
        return 10_000_000 + _stable_int(self.seed, "query", query) % 90_000_000

    def nid(self, query: str, index: int) -> str:
        return f"{self._query_number(query)}{index:0{_INDEX_DIGITS}d}"

    def index_of(self, query: str, nid: str) -> int | None:
        """The item's index when ``nid`` is one of ``query``'s results, else None."""
        if not nid.isascii() or not nid.isdigit() or len(nid) <= _INDEX_DIGITS:
            return None
        number, index = int(nid[:-_INDEX_DIGITS]), int(nid[-_INDEX_DIGITS:])
        if number != self._query_number(query) or index >= self.total(query):
            return None
        return index

    # ---- items ----------------------------------------------------------------------------
    def is_wrong(self, query: str, index: int) -> bool:
        return stable_fraction(self.seed, "wrong", query, index) < self.wrong_item_rate

    def item(self, query: str, index: int) -> Item:
        rng = random.Random(_stable_int(self.seed, "item", query, index))
        tags = " ".join(rng.sample(_TITLE_TAGS, 2))
        return Item(
            index=index,
            nid=self.nid(query, index),
            title=f"{query} {tags}",
            price=f"{rng.uniform(9.9, 399):.2f}",
            shop=rng.choice(_SHOPS),
            location=rng.choice(_LOCATIONS),
            sales=rng.randrange(0, 20000),
            wrong=self.is_wrong(query, index),
        )

    def page(self, query: str, offset: int, size: int) -> list[Item]:
        stop = min(self.total(query), offset + size)
        return [self.item(query, i) for i in range(max(0, offset), stop)]

    def picture_attrs(self, query: str, index: int) -> ProductAttrs:
        """The complete attributes of the item's picture: what the query names, the rest at
        random; for a wrong item, a near miss (one named attribute changed) or an unrelated
        product."""
        rng = random.Random(_stable_int(self.seed, "attrs", query, index))
        named = parse_query(query)
        if not self.is_wrong(query, index):
            return named.completed(rng)
        named_fields = [name for name in ATTRIBUTE_NAMES if getattr(named, name) is not None]
        if named_fields and rng.random() < 0.5:
            changed = rng.choice(named_fields)
            others = sorted(set(VOCABULARIES[changed]) - {getattr(named, changed)})
            values = {name: getattr(named, name) for name in ATTRIBUTE_NAMES}
            values[changed] = rng.choice(others)
            return ProductAttrs(**values).completed(rng)
        exclude = {name: {getattr(named, name)} for name in named_fields}
        return random_attrs(rng, exclude=exclude)

    def picture_seed(self, query: str, index: int) -> int:
        return _stable_int(self.seed, "picture", query, index)
