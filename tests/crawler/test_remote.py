"""The remote WebDriver backend: the worker drives a browser it did not start, through the
W3C WebDriver protocol (a Selenium Grid in production; a standalone chromedriver here)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from shared.image_validation import check_prepared
from tests.fixtures_crawler import log_in
from tests.helpers import free_port, wait_for_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def webdriver_server():
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/chromedriver", f"--port={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGKILL)   # chromedriver and the browsers it started
    proc.wait(10)


def test_crawl_through_a_remote_webdriver(crawler_workers, crawl_client, shop, webdriver_server):
    worker = crawler_workers(rank=4, mode="remote", env={
        "CNCLIP_CRAWLER_REMOTE_URL": webdriver_server,
        "CNCLIP_CRAWLER_EXTRA_BROWSER_ARGS": "--headless=new",
    })
    # The worker starts no browser of its own.
    assert not [p for p in worker.processes() if p.name() in ("chromium", "chromedriver", "Xvfb")]
    log_in(crawl_client, shop, 4)
    request = crawl_client.submit("红色 T恤", n_images=3, job_id="remote", rank=4)
    result, = crawl_client.wait_results(request.reply_stream, 1)
    assert result.status == "ok", result.missing
    for image in result.images:
        check_prepared(image)
