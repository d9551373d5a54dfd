"""The flower service's command from docker-compose.yml, run for real (against the test Redis
and a free port): a login only when CNCLIP_FLOWER_BASIC_AUTH is set, none otherwise, and
never a lock-out of everyone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REDIS_PASSWORD = "compose-check-password"  # stands in for the deployment's; replaced by the test Redis URL

pytestmark = pytest.mark.slow


def _flower_command() -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    env["CNCLIP_CONTROL_TOKEN"] = "t"
    env["CNCLIP_REDIS_PASSWORD"] = REDIS_PASSWORD
    done = subprocess.run([str(BIN / "docker-compose"), "-f", str(REPO / "docker-compose.yml"),
                           "--profile", "monitoring", "config", "--format", "json"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    flower = json.loads(done.stdout)["services"]["flower"]
    # Published on the host's loopback only: without a login it must not be reachable from outside.
    assert all(p.get("host_ip") == "127.0.0.1" for p in flower["ports"]), flower["ports"]
    return flower["command"]


def _run_flower(redis_url: str, auth: str | None):
    command = _flower_command()
    port = free_port()
    # `config` keeps Compose's escape of "$" ("$$"); the container's shell sees it undone.
    script = command[2].replace("$$", "$").replace(f"redis://:{REDIS_PASSWORD}@redis:6379/0", redis_url).replace("--port=5555", f"--port={port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNCLIP_", "FLOWER_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    if auth is not None:
        env["CNCLIP_FLOWER_BASIC_AUTH"] = auth
    proc = subprocess.Popen([*command[:2], script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/healthcheck", timeout=2)
            return proc, base
        except httpx.TransportError:
            assert proc.poll() is None, "flower exited"
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("flower did not answer")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.mark.parametrize("auth", [None, ""])
def test_flower_without_credentials_needs_no_login(redis_url, auth):
    proc, base = _run_flower(redis_url, auth)
    try:
        assert httpx.get(f"{base}/workers", timeout=10).status_code == 200
    finally:
        _stop(proc)


def test_flower_with_credentials_asks_for_them(redis_url):
    proc, base = _run_flower(redis_url, "admin:s3cret")
    try:
        assert httpx.get(f"{base}/workers", timeout=10).status_code == 401
        assert httpx.get(f"{base}/workers", auth=("admin", "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{base}/workers", auth=("admin", "s3cret"), timeout=10).status_code == 200
    finally:
        _stop(proc)
