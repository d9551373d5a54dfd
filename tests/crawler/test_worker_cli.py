"""`python -m services.crawler worker` as a container runs it: the default worker name is one
the installed Celery accepts, and SIGTERM ends the worker quickly even while its browser waits on
a page that never loads."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from celery import Celery

from tests.fixtures_crawler import TAG_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class SilentServer:
    """Accepts TCP connections and never answers: a site whose pages never load."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(); shutdown() does.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()


def _start_worker(redis_url: str, base_url: str, tmp_path: Path, tag: str,
                  extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_CRAWLER_")}
    env.update({
        TAG_VARIABLE: tag,
        "CNCLIP_REDIS_URL": redis_url,
        "CNCLIP_CRAWLER_PROFILE": "shop",
        "CNCLIP_CRAWLER_BASE_URL": base_url,
        "CNCLIP_CRAWLER_BROWSER_MODE": "headless",
        "CNCLIP_CRAWLER_DATA_DIR": str(tmp_path / "state"),
        "CNCLIP_CRAWLER_RANK": "0",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    })
    log = open(tmp_path / f"worker-{tag}.log", "wb")
    # No --name: the default is what is under test.
    return subprocess.Popen([sys.executable, "-m", "services.crawler", "worker"], cwd=REPO_ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(TAG_VARIABLE) == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _ping(redis_url: str, timeout: float) -> list[str]:
    """Names of the workers that answer a Celery ping within ``timeout``."""
    app = Celery("cnclip-test-ping", broker=redis_url)
    deadline = time.monotonic() + timeout
    # A connection of our own, closed here: a ping that times out leaves its BRPOP unread, and
    # a pooled connection kept like that makes every later fork of this process (a DataLoader
    # worker) hang in kombu's after-fork cleanup, waiting for the reply.
    try:
        with app.connection_for_write() as connection:
            while time.monotonic() < deadline:
                replies = app.control.ping(timeout=1.0, connection=connection)
                if replies:
                    return [name for reply in replies for name in reply]
        return []
    finally:
        app.close()


def _stop(proc: subprocess.Popen, tag: str) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for leftover in _tagged(tag):
        leftover.kill()


def _log(tmp_path: Path, tag: str) -> str:
    return (tmp_path / f"worker-{tag}.log").read_text(errors="replace")[-3000:]


def test_default_worker_name_is_accepted_by_celery(redis_url, shop, tmp_path):
    tag = "default-name"
    proc = _start_worker(redis_url, shop.base_url, tmp_path, tag)
    try:
        names = _ping(redis_url, timeout=60)
        assert proc.poll() is None, _log(tmp_path, tag)
        assert names == [f"crawler-{proc.pid}@{socket.gethostname()}"], _log(tmp_path, tag)
    finally:
        _stop(proc, tag)


def test_sigterm_does_not_wait_for_a_page_that_never_loads(redis_url, tmp_path):
    silent = SilentServer()
    tag = "silent-site"
    # The login check opens a page of the silent site; it would wait the full two minutes.
    proc = _start_worker(redis_url, f"http://127.0.0.1:{silent.port}", tmp_path, tag,
                         {"CNCLIP_CRAWLER_PAGE_LOAD_TIMEOUT_S": "120"})
    try:
        assert _ping(redis_url, timeout=60), _log(tmp_path, tag)
        assert silent.accepted.wait(60), "the browser never opened the site"
        time.sleep(1.0)  # the page load is under way
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        took = time.monotonic() - stopped_at
        assert took < 15, f"worker took {took:.1f}s to stop:\n{_log(tmp_path, tag)}"
        deadline = time.monotonic() + 10
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p.name() for p in _tagged(tag)], "processes left after the worker stopped"
    finally:
        _stop(proc, tag)
        silent.close()
