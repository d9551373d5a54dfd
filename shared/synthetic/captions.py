"""Chinese captions of synthetic products, written the way shop listings and searches read.

Every template names all three attributes, so that a caption describes exactly one kind of
product and the ground truth of a query (every picture of that kind) is complete.
"""
from __future__ import annotations

import random

from shared.synthetic.attributes import ProductAttrs

CAPTION_TEMPLATES: tuple[str, ...] = (
    "{colour}{pattern}{category}",
    "{pattern}{colour}{category}",
    "新款{pattern}{colour}{category} 包邮",
    "{colour}{category} {pattern}款",
    "夏季{colour}{pattern}{category}",
    "{category}{colour}{pattern}",
    "热卖{colour}{pattern}图案{category}",
    "简约{pattern}风格{colour}{category}",
)


def make_caption(attrs: ProductAttrs, rng: random.Random | int, template: str | None = None) -> str:
    """A caption of a complete product from a random (or the given) template."""
    if not attrs.is_complete:
        raise ValueError(f"a caption needs every attribute, got {attrs}")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    chosen = template if template is not None else rng.choice(CAPTION_TEMPLATES)
    return chosen.format(**attrs.words())
