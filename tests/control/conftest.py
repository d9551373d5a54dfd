"""Real servers for the control tests: the control service under uvicorn (``ControlServer``)
and the job runner as a Celery worker (``RunnerWorker``), both as subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, headless_chromium, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-5b1c"


def _tail(path: str, lines: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ControlServer:
    def __init__(self, redis_url: str, data_root: Path, token: str = TOKEN,
                 env: dict[str, str] | None = None):
        self.redis_url = redis_url
        self.data_root = data_root
        self.token = token
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="control-", suffix=".log", delete=False).name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60.0, **kwargs)

    def start(self, timeout: float = 30.0) -> "ControlServer":
        env = {**os.environ, "CNCLIP_REDIS_URL": self.redis_url, "CNCLIP_DATA_ROOT": str(self.data_root),
               "CNCLIP_CONTROL_HOST": "127.0.0.1", "CNCLIP_CONTROL_PORT": str(self.port),
               "CNCLIP_CONTROL_TOKEN": self.token, "CNCLIP_CONTROL_SSE_PING_S": "1",
               "CNCLIP_CONTROL_LOG_LEVEL": "warning", **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.control"], cwd=REPO_ROOT,
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"control did not answer in {timeout}s:\n{_tail(self.log)}")

    def stop(self) -> None:
        stop_process(self.proc, 15)


class RunnerWorker:
    """``celery -A services.trainer.runner.celery_app worker -Q gpu --pool solo``."""

    def __init__(self, redis_url: str, data_root: Path, env: dict[str, str] | None = None):
        self.redis_url = redis_url
        self.data_root = data_root
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="runner-", suffix=".log", delete=False).name

    def start(self, timeout: float = 60.0) -> "RunnerWorker":
        env = {**os.environ, "CNCLIP_REDIS_URL": self.redis_url, "CNCLIP_DATA_ROOT": str(self.data_root),
               "CNCLIP_RUNNER_DEVICE_OVERRIDE": "cpu", "CNCLIP_RUNNER_STOP_GRACE_S": "5",
               "CNCLIP_RUNNER_RECOVERY_INTERVAL_S": "2", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO_ROOT), **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "services.trainer.runner.celery_app", "worker",
                 "-Q", "gpu", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO",
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "-n", f"runner-{os.getpid()}-{time.monotonic_ns()}@%h"],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runner exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if "ready." in Path(self.log).read_text(errors="replace"):
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"runner not ready in {timeout}s:\n{_tail(self.log)}")

    def kill(self) -> None:
        """Dies like a crashed machine would: no shutdown handlers run."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc, 60)

    def log_tail(self) -> str:
        return _tail(self.log)


@pytest.fixture()
def data_root(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture()
def control(redis_url, data_root):
    server = ControlServer(redis_url, data_root).start()
    yield server
    server.stop()


@pytest.fixture()
def runner(redis_url, data_root):
    worker = RunnerWorker(redis_url, data_root).start()
    yield worker
    worker.stop()


@pytest.fixture()
def browser(tmp_path):
    """Headless Chromium through Selenium, with a fresh profile."""
    driver = headless_chromium(tmp_path / "chrome")
    yield driver
    driver.quit()


def sign_in(driver, server: ControlServer, path: str = "/status") -> None:
    """Signs in through the page's own form, as a person would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.base_url + path)
    form = WebDriverWait(driver, 20).until(ec.presence_of_element_located((By.ID, "sign-in")))
    form.find_element(By.ID, "token").send_keys(server.token)
    form.submit()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "header.topbar"))
