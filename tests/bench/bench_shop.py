"""How many queries a minute the demo shop serves to one client: a result page plus 5 pictures
per query, as a crawler asks for them, over real HTTP to a uvicorn subprocess.

Cold: every query new (every picture rendered). Warm: the same queries again (pictures from the
LRU cache). The crawler's benchmark needs the shop well above 60 queries/min per browser.
Prints one JSON object on the last line.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures_shop import ShopServer  # noqa: E402

QUERIES = 40
IMAGES_PER_QUERY = 5
COLOURS = ("红色", "蓝色", "绿色", "黄色", "黑色", "白色", "粉色", "紫色")
THINGS = ("T恤", "杯子", "帽子", "包", "鞋")


def crawl(client: httpx.Client, queries: list[str]) -> float:
    started = time.perf_counter()
    for query in queries:
        page = client.get("/search", params={"q": query})
        page.raise_for_status()
        nids = page.text.split('data-nid="')[1:1 + 2 * IMAGES_PER_QUERY:2]
        for nid in (n.split('"', 1)[0] for n in nids):
            client.get(f"/img/{nid}.jpg", params={"q": query}).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    queries = [f"{COLOURS[i % len(COLOURS)]}{THINGS[i // len(COLOURS) % len(THINGS)]} {i}" for i in range(QUERIES)]
    with ShopServer() as shop, httpx.Client(base_url=shop.base_url, timeout=60) as client:
        shop.login(client)
        crawl(client, ["预热"])
        cold = crawl(client, queries)
        warm = crawl(client, queries)
        cache = shop.stats()["image_cache"]
    result = {
        "bench": "shop",
        "queries": QUERIES,
        "images_per_query": IMAGES_PER_QUERY,
        "cold_queries_per_min": round(QUERIES / cold * 60, 1),
        "warm_queries_per_min": round(QUERIES / warm * 60, 1),
        "warm_over_cold": round(cold / warm, 2),
        "target_queries_per_min": 60,
        "image_cache": cache,
    }
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
