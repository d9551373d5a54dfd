"""The leakage guard on the synthetic set: gallery copies are dropped, other products kept."""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from services.trainer.online.leakage import DEFAULT_THRESHOLD, LeakageGuard, perceptual_hash
from services.trainer.online.sources import make_source
from shared.image_cache import ImageCache


def _gallery(data, split: str) -> list[bytes]:
    """The split's pictures as JPEG bytes, from its MUGE tsv (image_id \\t base64)."""
    out = []
    for line in data.imgs(split).read_text().splitlines():
        _, b64 = line.split("\t")
        out.append(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
    return out


def _variant(jpeg: bytes, side: int | None, quality: int) -> bytes:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    if side:
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def guard(synthetic_data):
    return LeakageGuard.from_lmdb(synthetic_data.lmdb("valid"))


def test_the_gallery_is_read_from_the_lmdb(guard, synthetic_data):
    assert len(guard) == len(_gallery(synthetic_data, "valid")) > 0
    assert guard.hashes.dtype == np.uint64 and guard.threshold == DEFAULT_THRESHOLD


def test_copies_of_gallery_pictures_are_dropped_and_other_products_kept(guard, synthetic_data):
    gallery = _gallery(synthetic_data, "valid")
    copies = [_variant(g, side, q) for g in gallery for side, q in ((None, 90), (224, 90), (300, 75))]
    others = _gallery(synthetic_data, "test") + _gallery(synthetic_data, "train")[:200]
    copy_distance = max(int(guard.distances(c).min()) for c in copies)
    other_distance = min(int(guard.distances(o).min()) for o in others)
    # The threshold sits between the two, with room on both sides.
    assert copy_distance < DEFAULT_THRESHOLD < other_distance, (copy_distance, other_distance)
    kept, dropped = guard.filter(copies[:30] + others[:30])
    assert dropped == 30 and kept == others[:30]


def test_filter_keeps_order_and_counts(guard, synthetic_data):
    gallery = _gallery(synthetic_data, "valid")
    others = _gallery(synthetic_data, "test")[:3]
    images = [others[0], gallery[5], others[1], _variant(gallery[9], 224, 80), others[2]]
    assert guard.filter(images) == (others, 2)
    assert LeakageGuard([]).filter(images) == (images, 0)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no LMDB image database"):
        LeakageGuard.from_lmdb(tmp_path)
    with pytest.raises(ValueError, match="threshold"):
        LeakageGuard([], threshold=-1)
    with pytest.raises(ValueError, match="uint64 words"):
        LeakageGuard([np.zeros(2, dtype=np.uint64)])


def test_thirty_thousand_gallery_pictures_cost_milliseconds_per_image(synthetic_data):
    rng = np.random.default_rng(0)
    gallery = _gallery(synthetic_data, "valid")
    hashes = list(rng.integers(0, 2**63, size=(30_000, 4), dtype=np.uint64))
    hashes.append(perceptual_hash(gallery[0]))
    big = LeakageGuard(hashes)
    started = time.perf_counter()
    kept, dropped = big.filter([gallery[0]] * 20)
    per_image = (time.perf_counter() - started) / 20
    # The reference, measured here: hashing the picture, which every check must do anyway.
    started = time.perf_counter()
    for _ in range(20):
        perceptual_hash(gallery[0])
    hashing = (time.perf_counter() - started) / 20
    assert dropped == 20 and kept == []
    # Comparing with 30,000 gallery hashes costs a few hashings (about 3), not thousands.
    assert per_image < 15 * hashing, (per_image, hashing)


@pytest.mark.browser
@pytest.mark.slow
def test_a_gallery_picture_served_by_the_shop_is_dropped_and_the_others_kept(
        tmp_path, redis_url, crawler_worker, shop, synthetic_data, guard):
    gallery = _gallery(synthetic_data, "valid")
    shop.set_faults(pictures={
        "紫色 条纹 鞋子": [base64.b64encode(gallery[3]).decode()],            # first result only
        "红色 波点 帽子": [base64.b64encode(g).decode() for g in gallery[:2]],  # every result asked
    })
    source = make_source("live", cache_dir=tmp_path, job_id="job-leak", rank=0, n_images=2,
                         window=2, wait_s=90, redis_url=redis_url, request_ttl_s=120, guard=guard)
    queries = ["紫色 条纹 鞋子", "红色 波点 帽子"]
    source.start_pass("valid", queries, pass_index=0)
    got = source.take(queries)
    counts = source.end_pass()
    source.close()
    partly = got["紫色 条纹 鞋子"]
    assert partly.ok and len(partly.images) == 1 and partly.dropped_leaked == 1
    assert not guard.is_leaked(partly.images[0])
    assert got["红色 波点 帽子"].reason == "leaked" and got["红色 波点 帽子"].dropped_leaked == 2
    assert counts["dropped_leaked"] == 3 and counts["leaked"] == 1
    # The cache keeps what was crawled (the guard belongs to a gallery, not to the cache).
    assert len(ImageCache(tmp_path, "valid").read("红色 波点 帽子").images) == 2
