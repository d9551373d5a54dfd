"""Real crawler workers for tests: ``CrawlerWorker``, ``CrawlClient`` and pytest fixtures.

``CrawlerWorker`` runs ``celery -A services.crawler.celery_app:app worker`` (prefork pool,
one process, one Chromium) as a subprocess in its own session, against a real Redis and a
real site (normally the demo shop)::

    worker = CrawlerWorker(redis_url, shop.base_url, tmp_path, rank=0, mode="headless").start()
    worker.pid                      # the Celery main process
    worker.pool_pids()              # its pool process(es), each owning a browser
    worker.processes()              # every live process the worker started (tagged by env)
    worker.kill_pool_process()      # SIGKILL the process running tasks (its parent replaces it)
    worker.kill()                   # SIGKILL the whole worker (main and pool processes)
    leftovers = worker.stop()       # warm shutdown; returns processes still alive after it
                                    # (Chromium, chromedriver, Xvfb...) -- should be []
    worker.log_text()               # the worker's output

    start(..., wait_for=("logged_in", "waiting_for_scan"))   login states that count as ready
    CrawlerWorker(..., env={"CNCLIP_CRAWLER_SHARE_LOGIN": "true"})   any extra setting

Every process the worker starts inherits the environment variable ``CNCLIP_TEST_WORKER_TAG``
with a value unique to the worker, which is how ``processes()`` finds Chromium child processes that
re-parent themselves to init. The worker's state (cookies) lives in ``workdir``.

``CrawlClient`` submits crawl requests the way the trainer does (Celery ``send_task`` of
``shared.tasks.CRAWL_TASK``) and reads the results back::

    client = CrawlClient(redis_url)
    request = client.submit("红色 T恤", n_images=5, job_id="j1", deadline_s=60)
    results = client.wait_results(request.reply_stream, count=1, timeout=60)  # [CrawlResult]
    client.login_state(rank)        # LoginState or None
    client.wait_login_state(rank, {"logged_in"}, timeout=30)
    client.close()

``log_in(client, shop, rank)`` confirms the rank's current QR code in the shop (the phone's
scan) and waits until the rank is ``logged_in``.

Fixtures (function scope, using ``redis_url`` and ``shop`` from the other fixture modules):
- ``crawl_client``: a ``CrawlClient`` on the test Redis.
- ``crawler_workers``: a factory ``crawler_workers(**CrawlerWorker kwargs) -> CrawlerWorker``;
  every worker it started is stopped at teardown, and the teardown fails if one left
  processes behind.
- ``crawler_worker``: one headless worker, rank 0, on the ``shop``, already logged in.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis as redis_lib
from celery import Celery

from shared import redis_keys
from shared.messages import CrawlRequest, CrawlResult, LoginState
from shared.redis_keys import CRAWL_QUEUE
from shared.tasks import CRAWL_TASK

REPO_ROOT = Path(__file__).resolve().parents[1]
TAG_VARIABLE = "CNCLIP_TEST_WORKER_TAG"


class CrawlerWorker:
    def __init__(
        self,
        redis_url: str,
        base_url: str,
        workdir: Path,
        *,
        rank: int | None = 0,
        mode: str = "headless",
        profile: str = "shop",
        env: dict[str, str] | None = None,
        loglevel: str = "INFO",
    ):
        self.redis_url = redis_url
        self.base_url = base_url
        self.workdir = Path(workdir)
        self.rank = rank
        self.mode = mode
        self.profile = profile
        self.extra_env = env or {}
        self.loglevel = loglevel
        self.tag = uuid.uuid4().hex
        self.name = f"crawler-{self.tag[:8]}@%h"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"worker-{self.tag[:8]}.log"
        self._log_handle: Any = None
        self._starts = 0

    # ---- lifecycle ----------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_CRAWLER_")}
        env.update({
            TAG_VARIABLE: self.tag,
            "CNCLIP_REDIS_URL": self.redis_url,
            "CNCLIP_CRAWLER_BASE_URL": self.base_url,
            "CNCLIP_CRAWLER_PROFILE": self.profile,
            "CNCLIP_CRAWLER_BROWSER_MODE": self.mode,
            "CNCLIP_CRAWLER_DATA_DIR": str(self.workdir / "state"),
            "PYTHONUNBUFFERED": "1",
        })
        if self.rank is not None:
            env["CNCLIP_CRAWLER_RANK"] = str(self.rank)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 90.0,
              wait_for: tuple[str, ...] = ("logged_in", "waiting_for_scan")) -> "CrawlerWorker":
        """Starts the worker and waits until Celery is ready and the browser has published a
        login state in ``wait_for`` (pass ``()`` not to wait for the browser)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_path, "ab")
        self._starts += 1
        self._log_handle.write(f"\n==== start #{self._starts} ====\n".encode())
        self._log_handle.flush()
        log_offset = self.log_path.stat().st_size
        started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "services.crawler.celery_app:app", "worker",
             "-Q", CRAWL_QUEUE, "-P", "prefork", "-c", "1", "-n", self.name,
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel", self.loglevel],
            cwd=REPO_ROOT, env=self.environment(), stdout=self._log_handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        client = redis_lib.Redis.from_url(self.redis_url)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"crawler worker exited with {self.proc.returncode}:\n"
                                       f"{self.log_text()[-4000:]}")
                text = self.log_path.read_bytes()[log_offset:].decode(errors="replace")
                # Celery logs its "ready." line at INFO; quieter workers count on the browser.
                ready = " ready." in text or self.loglevel.upper() not in ("DEBUG", "INFO")
                if ready and not wait_for:
                    return self
                if ready and self.rank is not None:
                    state = _read_login_state(client, self.rank)
                    if state is not None and state.updated_at >= started_at and \
                            state.state in wait_for and state.pid in self.pool_pids():
                        return self
                if ready and self.rank is None and self._claimed_rank(client, wait_for, started_at):
                    return self
                if time.monotonic() > deadline:
                    raise TimeoutError(f"crawler worker not ready after {timeout}s:\n"
                                       f"{self.log_text()[-4000:]}")
                time.sleep(0.1)
        except BaseException:
            self.stop(timeout=10)
            raise
        finally:
            client.close()

    def _claimed_rank(self, client: redis_lib.Redis, wait_for: tuple[str, ...],
                      started_at: float) -> bool:
        pool = set(self.pool_pids())
        for raw in client.smembers(redis_keys.crawler_ranks()):
            state = _read_login_state(client, int(raw))
            if state is not None and state.pid in pool and state.state in wait_for \
                    and state.updated_at >= started_at:
                self.rank = state.rank
                return True
        return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pool_pids(self) -> list[int]:
        if not self.alive():
            return []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children if "python" in (c.name() or "") or "celery" in (c.name() or "")]

    def processes(self) -> list[psutil.Process]:
        """Every live process (not a zombie) that carries this worker's tag."""
        found = []
        for proc in psutil.process_iter(["pid", "name", "status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                if proc.environ().get(TAG_VARIABLE) == self.tag:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def kill_pool_process(self) -> int:
        """SIGKILL the pool process (the one running tasks); returns its pid."""
        pids = self.pool_pids()
        assert pids, "the worker has no pool process"
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def kill(self) -> None:
        """SIGKILL the worker's main and pool processes at once (not its browser: the browser's
        own clean-up is what is under test)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._close_log()

    def stop(self, timeout: float = 30.0, settle: float = 10.0) -> list[str]:
        """Warm shutdown (SIGTERM), SIGKILL after ``timeout``. Waits up to ``settle`` seconds
        for every tagged process to go; returns descriptions of those that did not (and kills
        them, so a failing test leaves nothing behind either)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._close_log()
        deadline = time.monotonic() + settle
        leftovers = self.processes()
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.2)
            leftovers = self.processes()
        described = []
        for proc in leftovers:
            try:
                described.append(f"{proc.pid} {proc.name()} {' '.join(proc.cmdline())[:120]}")
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        return described

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _read_login_state(client: redis_lib.Redis, rank: int) -> LoginState | None:
    data = client.hgetall(redis_keys.crawler_login(rank))
    return LoginState.from_hash(data) if data else None


class CrawlClient:
    """Sends crawl requests like the trainer does and reads results and login states."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.redis = redis_lib.Redis.from_url(redis_url)
        self.celery = Celery("cnclip-test-sender", broker=redis_url)
        self.celery.conf.task_routes = {CRAWL_TASK: {"queue": CRAWL_QUEUE}}

    def close(self) -> None:
        self.celery.close()
        self.redis.close()

    def make_request(self, query: str, *, n_images: int = 5, job_id: str = "job",
                     split: str = "valid", deadline_s: float = 120.0, rank: int = 0,
                     request_id: str | None = None, batch_index: int = -1) -> CrawlRequest:
        return CrawlRequest(
            request_id=request_id or uuid.uuid4().hex, job_id=job_id, split=split, query=query,
            n_images=n_images, deadline=time.time() + deadline_s,
            reply_stream=redis_keys.crawl_results(job_id, rank), batch_index=batch_index,
        )

    def send(self, request: CrawlRequest) -> CrawlRequest:
        self.celery.send_task(CRAWL_TASK, args=[request.model_dump()], queue=CRAWL_QUEUE)
        return request

    def submit(self, query: str, **kwargs: Any) -> CrawlRequest:
        return self.send(self.make_request(query, **kwargs))

    def results(self, stream: str) -> list[CrawlResult]:
        return [CrawlResult.from_stream_fields(fields)
                for _, fields in self.redis.xrange(stream, "-", "+")]

    def wait_results(self, stream: str, count: int, timeout: float = 60.0) -> list[CrawlResult]:
        deadline = time.monotonic() + timeout
        while True:
            # XLEN is cheap; reading (and decoding) the images only once they are all there
            # keeps this loop from competing with the workers for CPU.
            if self.redis.xlen(stream) >= count:
                return self.results(stream)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.redis.xlen(stream)} of {count} crawl results after "
                                   f"{timeout}s")
            time.sleep(0.1)

    def login_state(self, rank: int) -> LoginState | None:
        return _read_login_state(self.redis, rank)

    def wait_login_state(self, rank: int, states: set[str], timeout: float = 30.0,
                         after: float = 0.0) -> LoginState:
        deadline = time.monotonic() + timeout
        while True:
            state = self.login_state(rank)
            if state is not None and state.state in states and state.updated_at >= after:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank} is {state.state if state else 'unknown'}, "
                                   f"not {sorted(states)}, after {timeout}s")
            time.sleep(0.1)

    def qr_png(self, rank: int) -> bytes | None:
        return self.redis.get(redis_keys.crawler_qr(rank))


def log_in(client: CrawlClient, shop: Any, rank: int, timeout: float = 30.0) -> LoginState:
    """The phone's scan of the rank's current QR code; returns the ``logged_in`` state."""
    state = client.wait_login_state(rank, {"waiting_for_scan", "logged_in"}, timeout)
    if state.state == "waiting_for_scan":
        response = shop.confirm(shop.latest_token())
        response.raise_for_status()
    return client.wait_login_state(rank, {"logged_in"}, timeout)


@pytest.fixture()
def crawl_client(redis_url):
    client = CrawlClient(redis_url)
    yield client
    client.close()


@pytest.fixture()
def crawler_workers(redis_url, shop, tmp_path):
    started: list[CrawlerWorker] = []

    def start(**kwargs: Any) -> CrawlerWorker:
        kwargs.setdefault("workdir", tmp_path / f"crawler{len(started)}")
        kwargs.setdefault("redis_url", redis_url)
        kwargs.setdefault("base_url", shop.base_url)
        wait_kwargs = {k: kwargs.pop(k) for k in ("timeout", "wait_for") if k in kwargs}
        worker = CrawlerWorker(**kwargs)
        started.append(worker)
        return worker.start(**wait_kwargs)

    yield start
    problems = []
    for worker in started:
        leftovers = worker.stop()
        if leftovers:
            problems.append(f"worker {worker.tag[:8]} left {leftovers}")
    assert not problems, problems


@pytest.fixture()
def crawler_worker(crawler_workers, crawl_client, shop):
    worker = crawler_workers(rank=0, mode="headless")
    log_in(crawl_client, shop, 0)
    return worker
