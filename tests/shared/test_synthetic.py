"""The synthetic renderer, its vocabularies, captions and query parsing."""
from __future__ import annotations

import io
import random
import statistics
import time

import numpy as np
import pytest
from PIL import Image

from shared.synthetic import (
    CAPTION_TEMPLATES,
    CATEGORIES,
    COLOURS,
    PATTERNS,
    ProductAttrs,
    make_caption,
    parse_query,
    random_attrs,
    render_product,
)


def all_products():
    return [ProductAttrs(c, k, p) for c in COLOURS for k in CATEGORIES for p in PATTERNS]


def test_vocabularies_are_large_enough_and_words_unique():
    assert len(COLOURS) >= 8 and len(CATEGORIES) >= 6 and len(PATTERNS) >= 4
    words = [e.zh for vocab in (COLOURS, CATEGORIES, PATTERNS) for e in vocab.values()]
    assert len(words) == len(set(words))
    assert COLOURS["red"].zh == "红色" and CATEGORIES["tshirt"].zh == "T恤" and PATTERNS["striped"].zh == "条纹"


def test_unknown_attribute_value_is_rejected_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown colour 'teal'.*red"):
        ProductAttrs(colour="teal")


def test_every_caption_of_every_product_parses_back_to_its_attributes():
    for attrs in all_products():
        for template in CAPTION_TEMPLATES:
            caption = make_caption(attrs, 0, template)
            assert parse_query(caption) == attrs, caption


@pytest.mark.parametrize(
    "query, expected",
    [
        ("红色T恤", ProductAttrs("red", "tshirt", None)),
        ("粉红色条纹连衣裙", ProductAttrs("pink", "dress", "striped")),  # not red
        ("包邮 蓝色格子短袖", ProductAttrs("blue", "tshirt", "checked")),  # 包邮 is not a bag
        ("ｔ恤 黑", ProductAttrs("black", "tshirt", None)),  # full-width letters
        ("波点马克杯", ProductAttrs(None, "mug", "dotted")),
        ("手提包 紫", ProductAttrs("purple", "bag", None)),
        ("绿色 红色 帽子", ProductAttrs("green", "hat", None)),  # the first colour wins
        ("iphone 15 手机壳", ProductAttrs(None, None, None)),
        ("", ProductAttrs(None, None, None)),
    ],
)
def test_parse_query(query, expected):
    assert parse_query(query) == expected


def test_captions_need_every_attribute_and_templates_name_all_three():
    for template in CAPTION_TEMPLATES:
        assert all(f"{{{name}}}" in template for name in ("colour", "category", "pattern")), template
    with pytest.raises(ValueError):
        make_caption(ProductAttrs("red", None, "plain"), 0)
    rng = random.Random(1)
    captions = {make_caption(ProductAttrs("red", "mug", "plain"), rng) for _ in range(60)}
    assert len(captions) >= 5  # several templates in use


def test_render_is_deterministic_for_a_seed_and_varies_between_seeds():
    attrs = ProductAttrs("blue", "bag", "dotted")
    a = np.asarray(render_product(attrs, 42, 96))
    b = np.asarray(render_product(attrs, random.Random(42), 96))
    c = np.asarray(render_product(attrs, 43, 96))
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5  # position/background really move


def test_incomplete_attributes_are_filled_in_from_the_generator():
    image = render_product(parse_query("红色"), 7, 64)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(render_product(ProductAttrs("red"), 7, 64)))


def test_render_rejects_tiny_sizes():
    with pytest.raises(ValueError):
        render_product(ProductAttrs("red", "mug", "plain"), 0, 8)


def _share_near(image, rgb, tolerance=110):
    pixels = np.asarray(image).astype(int)
    distance = np.abs(pixels - np.array(rgb)).sum(axis=2)
    return float((distance < tolerance).mean())


@pytest.mark.parametrize("colour", sorted(COLOURS))
def test_the_named_colour_covers_a_good_part_of_every_plain_product(colour):
    rgb = COLOURS[colour].rgb
    for i, category in enumerate(CATEGORIES):
        image = render_product(ProductAttrs(colour, category, "plain"), i, 64)
        assert _share_near(image, rgb) > 0.03, (colour, category)


def test_patterns_change_the_product_surface():
    plain = render_product(ProductAttrs("blue", "tshirt", "plain"), 3, 96)
    blue = COLOURS["blue"].rgb
    for pattern in ("striped", "dotted", "checked", "starry"):
        patterned = render_product(ProductAttrs("blue", "tshirt", pattern), 3, 96)
        # Same seed, same placement: the pattern's ink replaces part of the blue.
        assert _share_near(patterned, blue) < _share_near(plain, blue) * 0.9, pattern


def test_random_attrs_respects_exclusions():
    rng = random.Random(0)
    drawn = [random_attrs(rng, {"colour": {"purple"}, "category": {"shoe"}}) for _ in range(300)]
    assert all(a.is_complete for a in drawn)
    assert not any(a.colour == "purple" or a.category == "shoe" for a in drawn)
    assert len({a.colour for a in drawn}) == len(COLOURS) - 1


def test_render_is_fast_enough_for_the_shop():
    rng = random.Random(0)
    products = [random_attrs(rng) for _ in range(5)]
    for attrs in products:  # warm-up
        render_product(attrs, rng, 224)
    timings, reference = [], []
    for i in range(40):
        started = time.perf_counter()
        render_product(products[i % 5], rng, 224)
        timings.append(time.perf_counter() - started)
        # The reference, interleaved so a busy machine slows both alike: encoding a plain
        # picture of the same size as the JPEG the shop serves.
        started = time.perf_counter()
        Image.new("RGB", (224, 224), (i, 80, 160)).save(io.BytesIO(), "JPEG", quality=90)
        reference.append(time.perf_counter() - started)
    # About 12 times the plain encode (2 ms, 4 ms on a busy core); far slower would starve the shop.
    ratio = statistics.median(timings) / statistics.median(reference)
    assert ratio < 60, ratio


def test_renderer_and_commands_never_import_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "from services.trainer.cli import main\n"
        f"assert main(['make-synthetic', '--out', {str(tmp_path)!r}, '--n-train', '4', '--n-valid', '3',"
        " '--n-test', '3', '--image-size', '32']) == 0\n"
        f"assert main(['build-lmdb', '--data-dir', {str(tmp_path)!r}, '--splits', 'train,valid,test']) == 0\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "lmdb" / "test" / "pairs" / "data.mdb").exists()
