"""Drawing of product-like pictures from attributes, with Pillow and numpy only.

Each picture is a category silhouette filled with the colour and pattern, lit unevenly, given a
soft shadow, rotated, scaled and placed at random on a random background (flat, gradient or
noise). The randomness is what keeps a model from memorising pixels: only the attributes stay
the same between two pictures of one product. A seed gives the same picture every time.
"""
from __future__ import annotations

import math
import random
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shared.synthetic.attributes import COLOURS, ProductAttrs

Box = tuple[float, float, float, float]
Point = tuple[float, float]


# ---------------------------------------------------------------- silhouettes
# Each draws the product in white on an "L" mask of side s; coordinates are fractions of s.

def _scale(points: list[Point], s: int) -> list[Point]:
    return [(x * s, y * s) for x, y in points]


def _box(box: Box, s: int) -> list[float]:
    return [v * s for v in box]


def _tshirt(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.polygon(
        _scale([(0.33, 0.10), (0.67, 0.10), (0.96, 0.30), (0.86, 0.47), (0.76, 0.40),
                (0.76, 0.95), (0.24, 0.95), (0.24, 0.40), (0.14, 0.47), (0.04, 0.30)], s),
        fill=255,
    )
    draw.ellipse(_box((0.40, 0.02, 0.60, 0.20), s), fill=0)


def _mug(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.rounded_rectangle(_box((0.14, 0.18, 0.66, 0.90), s), radius=0.08 * s, fill=255)
    draw.ellipse(_box((0.52, 0.32, 0.90, 0.74), s), outline=255, width=max(2, int(0.08 * s)))


def _hat(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.pieslice(_box((0.20, 0.18, 0.80, 0.98), s), 180, 360, fill=255)
    draw.ellipse(_box((0.04, 0.50, 0.96, 0.74), s), fill=255)


def _bag(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.arc(_box((0.28, 0.08, 0.72, 0.62), s), 150, 390, fill=255, width=max(2, int(0.07 * s)))
    draw.polygon(_scale([(0.20, 0.36), (0.80, 0.36), (0.92, 0.92), (0.08, 0.92)], s), fill=255)


def _shoe(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.polygon(
        _scale([(0.04, 0.78), (0.04, 0.52), (0.12, 0.40), (0.36, 0.38), (0.42, 0.26),
                (0.58, 0.26), (0.62, 0.46), (0.86, 0.56), (0.96, 0.66), (0.96, 0.78)], s),
        fill=255,
    )
    draw.rounded_rectangle(_box((0.02, 0.74, 0.98, 0.84), s), radius=0.04 * s, fill=255)


def _bottle(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.rounded_rectangle(_box((0.30, 0.36, 0.70, 0.96), s), radius=0.07 * s, fill=255)
    draw.polygon(_scale([(0.42, 0.22), (0.58, 0.22), (0.70, 0.40), (0.30, 0.40)], s), fill=255)
    draw.rectangle(_box((0.42, 0.08, 0.58, 0.24), s), fill=255)
    draw.rectangle(_box((0.39, 0.03, 0.61, 0.10), s), fill=255)


def _trousers(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.polygon(
        _scale([(0.26, 0.04), (0.74, 0.04), (0.82, 0.96), (0.56, 0.96), (0.50, 0.36),
                (0.44, 0.96), (0.18, 0.96)], s),
        fill=255,
    )


def _dress(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.polygon(
        _scale([(0.36, 0.04), (0.44, 0.04), (0.50, 0.12), (0.56, 0.04), (0.64, 0.04),
                (0.64, 0.34), (0.92, 0.96), (0.08, 0.96), (0.36, 0.34)], s),
        fill=255,
    )


SILHOUETTES: dict[str, Callable[[ImageDraw.ImageDraw, int], None]] = {
    "tshirt": _tshirt,
    "mug": _mug,
    "hat": _hat,
    "bag": _bag,
    "shoe": _shoe,
    "bottle": _bottle,
    "trousers": _trousers,
    "dress": _dress,
}


# ---------------------------------------------------------------- patterns
# Each draws the pattern's marks in ``ink`` over the whole square of side s.

def _plain(draw: ImageDraw.ImageDraw, s: int, ink: tuple[int, int, int], rng: random.Random) -> None:
    return None


def _striped(draw: ImageDraw.ImageDraw, s: int, ink: tuple[int, int, int], rng: random.Random) -> None:
    period = max(4, int(s * rng.uniform(0.12, 0.18)))
    width = max(2, int(period * rng.uniform(0.35, 0.5)))
    offset = rng.randrange(period)
    for y in range(-period + offset, s + period, period):
        draw.rectangle([0, y, s, y + width - 1], fill=ink)


def _dotted(draw: ImageDraw.ImageDraw, s: int, ink: tuple[int, int, int], rng: random.Random) -> None:
    period = max(5, int(s * rng.uniform(0.14, 0.2)))
    radius = max(1.5, period * rng.uniform(0.22, 0.3))
    ox, oy = rng.randrange(period), rng.randrange(period)
    for row, y in enumerate(range(-period + oy, s + period, period)):
        shift = period / 2 if row % 2 else 0  # staggered rows, as printed polka dots are
        for x in range(-period + ox, s + period, period):
            cx = x + shift
            draw.ellipse([cx - radius, y - radius, cx + radius, y + radius], fill=ink)


def _checked(draw: ImageDraw.ImageDraw, s: int, ink: tuple[int, int, int], rng: random.Random) -> None:
    """Gingham: crossing bands, so the product's colour still covers most of the surface."""
    period = max(5, int(s * rng.uniform(0.16, 0.22)))
    width = max(1, int(period * rng.uniform(0.22, 0.3)))
    ox, oy = rng.randrange(period), rng.randrange(period)
    for v in range(-period, s + period, period):
        draw.rectangle([0, v + oy, s, v + oy + width - 1], fill=ink)
        draw.rectangle([v + ox, 0, v + ox + width - 1, s], fill=ink)


def _star(cx: float, cy: float, r: float, turn: float) -> list[Point]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.42
        angle = turn + k * math.pi / 5 - math.pi / 2
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _starry(draw: ImageDraw.ImageDraw, s: int, ink: tuple[int, int, int], rng: random.Random) -> None:
    period = max(7, int(s * rng.uniform(0.2, 0.26)))
    radius = period * rng.uniform(0.32, 0.4)
    ox, oy = rng.randrange(period), rng.randrange(period)
    turn = rng.uniform(0, math.pi)
    for row, y in enumerate(range(-period + oy, s + period, period)):
        shift = period / 2 if row % 2 else 0
        for x in range(-period + ox, s + period, period):
            draw.polygon(_star(x + shift, y, radius, turn), fill=ink)


PATTERN_PAINTERS: dict[str, Callable[[ImageDraw.ImageDraw, int, tuple[int, int, int], random.Random], None]] = {
    "plain": _plain,
    "striped": _striped,
    "dotted": _dotted,
    "checked": _checked,
    "starry": _starry,
}


# ---------------------------------------------------------------- colours and backgrounds

def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _luminance(rgb: tuple[int, int, int]) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _ink_for(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    """The pattern's second colour: near white on dark products, near black on light ones, so
    the product's own colour stays the dominant one either way."""
    if _luminance(rgb) < 150:
        return _jitter((238, 238, 232), rng, 10)
    return _jitter((40, 40, 45), rng, 10)


def _background_colour(rng: random.Random) -> tuple[int, int, int]:
    """Muted, mostly light tones: real product photos sit on such backgrounds, and a muted
    background never competes with the product's colour."""
    grey = rng.uniform(150, 235)
    tint = [rng.uniform(-18, 18) for _ in range(3)]
    return tuple(int(min(255, max(0, grey + t))) for t in tint)  # type: ignore[return-value]


def _background(size: int, rng: random.Random) -> Image.Image:
    kind = rng.random()
    if kind < 0.35:
        return Image.new("RGB", (size, size), _background_colour(rng))
    if kind < 0.7:
        start = np.array(_background_colour(rng), dtype=np.float32)
        end = np.array(_background_colour(rng), dtype=np.float32)
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
        column = (start * (1 - ramp) + end * ramp).astype(np.uint8)[:, None, :]
        image = Image.fromarray(np.ascontiguousarray(np.broadcast_to(column, (size, size, 3))))
        return image.rotate(rng.choice((0, 90, 180, 270)))
    # Smooth noise: a few random pixels blown up, plus fine grain.
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    base = np.array(_background_colour(rng), dtype=np.float32)
    coarse = noise_rng.normal(0.0, 12.0, size=(6, 6, 3)).astype(np.float32) + base
    image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    grain = noise_rng.integers(-8, 9, size=(size, size, 1), dtype=np.int16)
    pixels = np.asarray(image, dtype=np.int16) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _lighting(side: int, rng: random.Random) -> Image.Image:
    """An "L" ramp that darkens one side of the product a little, like a lamp from one side."""
    ramp = np.linspace(rng.uniform(0.75, 0.9), 1.0, side, dtype=np.float32)
    if rng.random() < 0.5:
        ramp = ramp[::-1]
    row = Image.fromarray((ramp[None, :] * 255).astype(np.uint8)).resize((side, side))
    return row if rng.random() < 0.5 else row.transpose(Image.Transpose.ROTATE_90)


# ---------------------------------------------------------------- the picture

def render_product(
    attrs: ProductAttrs, rng: random.Random | int, size: int = 224
) -> Image.Image:
    """An RGB picture of ``size`` x ``size`` showing one product with these attributes.

    ``rng`` is a ``random.Random`` (consumed) or a seed. Attributes the product leaves open
    (``None``) are drawn from ``rng`` first, so a parsed query can be rendered directly."""
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    attrs = attrs if attrs.is_complete else attrs.completed(rng)
    assert attrs.colour and attrs.category and attrs.pattern

    picture = _background(size, rng)

    # The product is drawn on its own square, then rotated and placed.
    side = max(12, int(size * rng.uniform(0.55, 0.85)))
    mask = Image.new("L", (side, side), 0)
    SILHOUETTES[attrs.category](ImageDraw.Draw(mask), side)

    colour = _jitter(COLOURS[attrs.colour].rgb, rng, 14)
    surface = Image.new("RGB", (side, side), colour)
    PATTERN_PAINTERS[attrs.pattern](ImageDraw.Draw(surface), side, _ink_for(colour, rng), rng)
    if rng.random() < 0.5:  # vertical stripes as often as horizontal ones
        surface = surface.transpose(Image.Transpose.ROTATE_90)
    black = Image.new("RGB", (side, side), (0, 0, 0))
    surface = Image.composite(surface, black, _lighting(side, rng))

    if rng.random() < 0.5:  # products face either way
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-25.0, 25.0)
    product = surface.convert("RGBA")
    product.putalpha(mask)
    product = product.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)

    x = rng.randint(-side // 10, max(-side // 10, size - product.width + side // 10))
    y = rng.randint(-side // 10, max(-side // 10, size - product.height + side // 10))

    # Soft shadow under the product so light products stand out on light backgrounds.
    alpha = product.getchannel("A")
    shadow_alpha = alpha.point(lambda v: v * 45 // 100).filter(ImageFilter.BoxBlur(max(1, side // 40)))
    offset = max(1, side // 30)
    picture.paste((0, 0, 0), (x + offset, y + offset), shadow_alpha)
    picture.paste(product, (x, y), product)
    return picture
