"""The local stack (scripts/stack.sh: honcho + Procfile) starts every service and stops them
all: no Redis, Chromium, chromedriver or Xvfb is left behind."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis as redis_lib

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _state(root: Path) -> Path:
    return root.parent / (root.name + ".stack")


def _env_file(root: Path) -> dict[str, str]:
    lines = (_state(root) / "stack.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _stack_processes(stack_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CNCLIP_STACK_ID") == stack_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def test_stack_up_and_down_leaves_nothing(tmp_path):
    root = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    env.update({"CNCLIP_DATA_ROOT": str(root), "CNCLIP_CONTROL_PORT": str(free_port()),
                "CNCLIP_SHOP_PORT": str(free_port())})
    up = subprocess.run(["bash", "scripts/stack.sh", "up"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=240)
    settings = _env_file(root) if (_state(root) / "stack.env").exists() else {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        base = f"http://127.0.0.1:{settings['CNCLIP_CONTROL_PORT']}"
        headers = {"Authorization": f"Bearer {settings['CNCLIP_CONTROL_TOKEN']}"}
        assert httpx.get(base + "/jobs").status_code == 401
        # The crawler worker starts its browser under Xvfb and reports its rank's login state.
        deadline = time.monotonic() + 120
        ranks = []
        while time.monotonic() < deadline and not ranks:
            ranks = [r for r in httpx.get(base + "/api/login", headers=headers).json()
                     if r["state"] in ("waiting_for_scan", "logged_in")]
            time.sleep(1)
        assert ranks, (_state(root) / "stack.log").read_text()[-3000:]
        assert httpx.get(f"http://127.0.0.1:{settings['CNCLIP_SHOP_PORT']}/healthz").status_code == 200
        # The search service answers through the control's proxy (no index built yet: none listed).
        deadline = time.monotonic() + 60
        indexes = httpx.get(base + "/api/search/indexes", headers=headers)
        while indexes.status_code == 503 and time.monotonic() < deadline:
            time.sleep(1)
            indexes = httpx.get(base + "/api/search/indexes", headers=headers)
        assert indexes.status_code == 200 and indexes.json()["indexes"] == [], indexes.text
        assert httpx.get(f"http://127.0.0.1:{settings['CNCLIP_SEARCH_PORT']}/api/search/indexes").status_code == 401
        processes = _stack_processes(settings["CNCLIP_STACK_ID"])
        names = {p.name() for p in processes}
        assert {"Xvfb", "chromedriver"} <= names and any("chrom" in n for n in names - {"chromedriver"}), names
        # The stack's state (Redis data, cookies, environment) is next to the data root, where
        # no job can write, and nothing of it is inside.
        assert (_state(root) / "redis" / "appendonlydir").is_dir()
        assert settings["CNCLIP_CRAWLER_DATA_DIR"] == str(_state(root) / "crawler")
        assert not any((root / name).exists() for name in ("redis", "crawler", "stack")), list(root.iterdir())
        # Redis answers only with the password, which no command line shows.
        port = int(settings["CNCLIP_STACK_REDIS_PORT"])
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port).ping()
        assert redis_lib.Redis.from_url(settings["CNCLIP_REDIS_URL"]).ping()
        password = settings["CNCLIP_STACK_REDIS_PASSWORD"]
        assert len(password) >= 32
        assert not [p.pid for p in processes if password in " ".join(p.cmdline())]
        # The shop's test switches are off.
        assert httpx.get(f"http://127.0.0.1:{settings['CNCLIP_SHOP_PORT']}/_test/tokens").status_code == 404
    finally:
        down = subprocess.run(["bash", "scripts/stack.sh", "down"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "leftover" not in down.stderr, down.stderr  # everything stopped by itself
    time.sleep(1)
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert not _stack_processes(settings["CNCLIP_STACK_ID"])
    redis_port = int(settings["CNCLIP_STACK_REDIS_PORT"])
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert redis_port not in listening and int(settings["CNCLIP_CONTROL_PORT"]) not in listening
