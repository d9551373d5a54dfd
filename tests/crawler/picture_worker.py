"""Runs the crawler's picture path (services.crawler.pictures) over URLs the way a worker does
(its download threads, its rules) in a fresh process and reports the peak memory. Used by
tests/crawler/test_hostile_pictures.py and tests/bench/bench_crawler_memory.py.

    python tests/crawler/picture_worker.py URL... -> JSON: {"peak_rss_mb", "results": [[ok, reason]...]}
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.crawler.download import ImageDownloader  # noqa: E402
from services.crawler.pictures import PictureFetcher  # noqa: E402
from services.crawler.settings import CrawlerSettings  # noqa: E402


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(urls: list[str]) -> None:
    settings = CrawlerSettings()
    downloader = ImageDownloader(timeout_s=settings.download_timeout_s, max_bytes=settings.max_image_bytes,
                                 attempts=1, backoff_s=0, concurrency=settings.download_concurrency,
                                 allow_private_hosts=True)
    fetcher = PictureFetcher(downloader, settings.image_rules(), settings.parallel_decodes)
    deadline = time.time() + 300
    with ThreadPoolExecutor(settings.download_concurrency) as pool:
        results = list(pool.map(lambda url: fetcher.fetch(url, None, deadline), urls))
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1),
                      "results": [[image is not None, reason] for image, reason in results]}))


if __name__ == "__main__":
    main(sys.argv[1:])
