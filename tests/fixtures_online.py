"""Online-learning fixtures: a crawled-image cache filled with the pictures the demo shop
serves for each query (its own catalog and renderer), so cache-mode tests need no browser."""
from __future__ import annotations

from pathlib import Path

from services.shop.catalog import Catalog
from services.shop.images import PictureStore
from services.shop.settings import ShopSettings
from shared.image_cache import ImageCache


def shop_pictures() -> PictureStore:
    settings = ShopSettings()
    catalog = Catalog(seed=settings.seed, results_per_query=settings.results_per_query,
                      wrong_item_rate=settings.wrong_item_rate, max_query_chars=settings.max_query_chars)
    return PictureStore(catalog, size=64, quality=90, cache_items=0)


def fill_cache(cache_dir: Path, split: str, queries, k: int = 5, skip=()) -> dict[str, list[bytes]]:
    """Cache ``k`` shop pictures for every query but those in ``skip``; returns what was cached."""
    store = shop_pictures()
    cache = ImageCache(cache_dir, split)
    cached = {}
    for query in dict.fromkeys(queries):
        if query in skip:
            continue
        images = [store.jpeg(query, i) for i in range(k)]
        cache.put(query, images)
        cached[query] = images
    return cached
