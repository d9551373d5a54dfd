"""The search service as a real subprocess (``SearchServer``) over a data root whose indexes
``build_index`` makes with the real ``cnclip index``; shared by the search and control tests."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
SEARCH_TOKEN = "test-token-5b1c"  # the control service's token (tests/control/conftest.py uses the same)
TINY = ["--vision-model", "tiny", "--text-model", "tiny", "--device", "cpu", "--precision", "fp32",
        "--img-batch-size", "32"]


def build_index(data_root: Path, name: str, gallery: Path, checkpoint: Path | None, *extra: str) -> Path:
    """``cnclip index`` into ``data_root/experiments/<name>/index`` (in a subprocess, as a user
    runs it); no checkpoint: ``extra`` names an ensemble's ``--members``."""
    resume = ["--resume", str(checkpoint)] if checkpoint is not None else []
    done = subprocess.run(
        [sys.executable, "-m", "services.trainer.cli", "index", "--image-data", str(gallery),
         *resume, "--experiments", str(data_root / "experiments"), "--name", name,
         *TINY, *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return data_root / "experiments" / name / "index"


class SearchServer:
    def __init__(self, data_root: Path, token: str = SEARCH_TOKEN, env: dict[str, str] | None = None):
        self.data_root = data_root
        self.token = token
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="search-", suffix=".log", delete=False).name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=60.0, **kwargs)

    def start(self, timeout: float = 120.0) -> "SearchServer":
        env = {**os.environ, "CNCLIP_DATA_ROOT": str(self.data_root), "CNCLIP_CONTROL_TOKEN": self.token,
               "CNCLIP_SEARCH_PORT": str(self.port), "CNCLIP_SEARCH_DEVICE": "cpu",
               "CNCLIP_SEARCH_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1", **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.search"], cwd=REPO_ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"search exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"search did not answer in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.proc, 15)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture()
def search_server_factory():
    started: list[SearchServer] = []

    def start(data_root: Path, **kwargs) -> SearchServer:
        server = SearchServer(data_root, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
