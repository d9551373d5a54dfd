"""The crawler's picture path against a hostile picture host (a real HTTP server): absurd
dimensions are refused before decoding and memory stays bounded, every per-picture failure is
that picture's reason, redirects are checked hop by hop, and the search query does not leak in
a Referer to other hosts."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.crawler.addresses import ForbiddenTarget, check_target
from services.crawler.download import ImageDownloader
from services.crawler.pictures import PictureFetcher
from shared.image_validation import ImageRules, InvalidImage, inspect_image
from tests.hostile_site import HostileSite, strip_png

WORKER = Path(__file__).with_name("picture_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site():
    with HostileSite() as server:
        yield server


def fetcher(allow_private: bool = True) -> PictureFetcher:
    downloader = ImageDownloader(timeout_s=10, max_bytes=10 * 1024 * 1024, attempts=2, backoff_s=0.05,
                                 concurrency=4, allow_private_hosts=allow_private)
    return PictureFetcher(downloader, ImageRules())


def test_absurd_dimensions_are_refused_before_decoding():
    for width, height in ((600_000, 64), (64, 600_000), (30_000, 2_000), (2_000, 30_000), (5_000, 100)):
        with pytest.raises(InvalidImage) as refused:
            inspect_image(strip_png(width, height))
        assert f"{width}x{height}" in refused.value.reason


def test_worker_memory_stays_bounded_over_hostile_pictures(site):
    urls = [site.url(p) for p in ("/wide.png", "/tall.png", "/wide.png", "/big.png", "/big.png", "/good.jpg")]
    out = subprocess.run([sys.executable, str(WORKER), *urls], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert [ok for ok, _ in report["results"]] == [False, False, False, True, True, True], report
    assert "600000x64" in report["results"][0][1]
    # A 6000x6000 RGBA picture is 144 MB decoded: one at a time, shrunk at once.
    assert report["peak_rss_mb"] < 450, report


def test_every_picture_failure_is_that_pictures_reason(site):
    pictures = fetcher()
    deadline = time.time() + 60
    cases = {"/good.jpg": None, "/loop": "too many redirects", "/to-file": "not an http(s) URL",
             "/bad-location": "location", "/wide.png": "600000x64", "/nothing-here": "HTTP 404"}
    for path, reason in cases.items():
        image, why = pictures.fetch(site.url(path), None, deadline)
        if reason is None:
            assert image and why == "", why
        else:
            assert image is None and reason in why, (path, why)


def test_internal_addresses_are_refused_unless_the_profile_allows_them(site):
    pictures = fetcher(allow_private=False)
    deadline = time.time() + 30
    for url in (site.url("/good.jpg"), site.url("/good.jpg", host="localhost"),
                "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.jpg", "http://[::1]:1/a.jpg",
                "http://0.0.0.0:1/a.jpg"):
        image, why = pictures.fetch(url, None, deadline)
        assert image is None and "internal address" in why, (url, why)
    with pytest.raises(ForbiddenTarget):
        check_target("http://[::ffff:127.0.0.1]/x", allow_private=False)
    # Allowed (the demo shop on loopback): but a redirect is still checked hop by hop.
    allowed = fetcher(allow_private=True)
    assert allowed.fetch(site.url("/good.jpg"), None, deadline)[0]
    image, why = allowed.fetch(site.url("/to-file"), None, deadline)
    assert image is None and "file:" in why


def test_the_sites_own_origin_is_allowed_but_no_other_internal_one():
    # The operator pointed the crawler at a stand-in on loopback: its own origin is trusted,
    # another port or host on the machine is not.
    site = "http://127.0.0.1:8000"
    check_target("http://127.0.0.1:8000/img/a.jpg", allow_private=False, site_origin=site)
    for url in ("http://127.0.0.1:6379/", "http://localhost:8000/a.jpg", "https://127.0.0.1:8000/a.jpg",
                "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(ForbiddenTarget, match="internal address"):
            check_target(url, allow_private=False, site_origin=site)


def test_the_query_reaches_only_the_pages_own_host_in_a_referer(site):
    pictures = fetcher()
    deadline = time.time() + 30
    page = site.url("/search?q=%E7%BA%A2%E8%89%B2&s=0")
    site.referers.clear()
    assert pictures.fetch(site.url("/referer.jpg"), page, deadline)[0]
    assert pictures.fetch(site.url("/referer.jpg", host="localhost"), page, deadline)[0]
    assert site.referers == [page, f"http://127.0.0.1:{site.port}/"]
