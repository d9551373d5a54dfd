"""Vocabularies of the synthetic products (colour, category, pattern) with their Chinese words,
and the parsing of a shopper's query back into attributes.

Attribute values are identified by short ASCII keys ("red", "tshirt", "striped"); the Chinese
word and the synonyms a query may use live next to each key. Keys, not words, are what the
renderer, the captions and the data set manifest speak of.
"""
from __future__ import annotations

import random
import unicodedata
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Colour:
    key: str
    zh: str
    rgb: tuple[int, int, int]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Category:
    key: str
    zh: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pattern:
    key: str
    zh: str
    aliases: tuple[str, ...] = ()


# Hues far enough apart that a small model at 64 px can tell them apart.
COLOURS: dict[str, Colour] = {
    c.key: c
    for c in (
        Colour("red", "红色", (210, 35, 40), ("红",)),
        Colour("blue", "蓝色", (35, 80, 200), ("蓝",)),
        Colour("green", "绿色", (40, 160, 60), ("绿",)),
        Colour("yellow", "黄色", (240, 205, 30), ("黄",)),
        Colour("black", "黑色", (25, 25, 28), ("黑",)),
        Colour("white", "白色", (245, 245, 242), ("白",)),
        Colour("pink", "粉色", (245, 140, 185), ("粉红色", "粉红", "粉")),
        Colour("purple", "紫色", (125, 45, 170), ("紫",)),
        Colour("orange", "橙色", (245, 125, 20), ("橘色", "橙")),
        Colour("brown", "棕色", (120, 75, 40), ("咖啡色", "棕")),
    )
}

CATEGORIES: dict[str, Category] = {
    c.key: c
    for c in (
        Category("tshirt", "T恤", ("短袖", "体恤")),
        Category("mug", "杯子", ("马克杯", "水杯", "杯")),
        Category("hat", "帽子", ("棒球帽", "渔夫帽", "帽")),
        Category("bag", "包", ("手提包", "包包", "挎包")),
        Category("shoe", "鞋", ("运动鞋", "鞋子", "球鞋")),
        Category("bottle", "瓶子", ("水瓶", "保温瓶", "瓶")),
        Category("trousers", "裤子", ("长裤", "休闲裤", "裤")),
        Category("dress", "连衣裙", ("裙子", "长裙", "裙")),
    )
}

PATTERNS: dict[str, Pattern] = {
    p.key: p
    for p in (
        Pattern("plain", "纯色", ("素色", "净色")),
        Pattern("striped", "条纹", ("横条纹", "条纹款")),
        Pattern("dotted", "波点", ("圆点", "点点")),
        Pattern("checked", "格子", ("格纹", "方格")),
        Pattern("starry", "星星", ("星星图案", "五角星", "星")),
    )
}

ATTRIBUTE_NAMES = ("colour", "category", "pattern")
VOCABULARIES: dict[str, dict] = {"colour": COLOURS, "category": CATEGORIES, "pattern": PATTERNS}


@dataclass(frozen=True)
class ProductAttrs:
    """One product; ``None`` means "not named" (only a parsed query has those)."""

    colour: str | None = None
    category: str | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        for name in ATTRIBUTE_NAMES:
            value = getattr(self, name)
            if value is not None and value not in VOCABULARIES[name]:
                known = ", ".join(VOCABULARIES[name])
                raise ValueError(f"unknown {name} {value!r}; known: {known}")

    @property
    def is_complete(self) -> bool:
        return all(getattr(self, name) is not None for name in ATTRIBUTE_NAMES)

    def words(self) -> dict[str, str]:
        """The Chinese word of each named attribute."""
        return {
            name: VOCABULARIES[name][value].zh
            for name in ATTRIBUTE_NAMES
            if (value := getattr(self, name)) is not None
        }

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def completed(self, rng: random.Random | int) -> ProductAttrs:
        """The same product with every unnamed attribute drawn at random (how the shop fills in
        what a query leaves open)."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        updates = {
            f.name: rng.choice(sorted(VOCABULARIES[f.name]))
            for f in fields(self)
            if getattr(self, f.name) is None
        }
        return replace(self, **updates)


def random_attrs(
    rng: random.Random, exclude: dict[str, set[str]] | None = None
) -> ProductAttrs:
    """A complete product whose values avoid ``exclude`` (attribute name -> keys)."""
    exclude = exclude or {}
    values = {}
    for name in ATTRIBUTE_NAMES:
        choices = sorted(set(VOCABULARIES[name]) - set(exclude.get(name, ())))
        if not choices:
            raise ValueError(f"every {name} is excluded")
        values[name] = rng.choice(choices)
    return ProductAttrs(**values)


def _surface_forms(vocabulary: dict) -> list[tuple[str, str]]:
    """(word, key) pairs, longest word first so that 粉红色 wins over 红色 and 红."""
    forms = [
        (word.lower(), key)
        for key, entry in vocabulary.items()
        for word in (entry.zh, *entry.aliases)
    ]
    return sorted(forms, key=lambda form: -len(form[0]))


_FORMS = {name: _surface_forms(vocab) for name, vocab in VOCABULARIES.items()}
# Shop phrases that contain an attribute word without naming one (包邮 = free shipping).
_NOT_ATTRIBUTES = ("包邮", "包装", "包退", "包换")


def parse_query(text: str) -> ProductAttrs:
    """The attributes a query names, ``None`` for the others.

    Words are matched longest first; a matched span is consumed so that one word is never read
    twice (粉红色 is pink, not pink and red). When a query names two values of one attribute,
    the earliest in the text wins."""
    remaining = unicodedata.normalize("NFKC", text).lower()
    for phrase in _NOT_ATTRIBUTES:
        remaining = remaining.replace(phrase, "\0" * len(phrase))
    found: dict[str, tuple[int, str]] = {}
    for name in ATTRIBUTE_NAMES:
        for word, key in _FORMS[name]:
            position = remaining.find(word)
            if position < 0:
                continue
            if name not in found or position < found[name][0]:
                found[name] = (position, key)
            remaining = remaining.replace(word, "\0" * len(word))
    return ProductAttrs(**{name: found[name][1] for name in found})
