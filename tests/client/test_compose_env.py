"""``cnclip secrets``: a ``.env`` beside docker-compose.yml with generated secrets, mode 600,
never overwritten, and read by Docker Compose itself."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from tests.client.cli import REPO_ROOT

BIN = Path(sys.executable).parent


def _secrets(*args: str, python: list[str] | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    cmd = python or [sys.executable, "-m", "services.trainer.cli", "secrets"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _compose_config(folder: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    return subprocess.run([str(BIN / "docker-compose"), "config", "--format", "json"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_secrets_are_written_once_private_and_compose_reads_them(tmp_path):
    shutil.copy(REPO_ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    before = _compose_config(tmp_path)
    assert before.returncode != 0 and "CNCLIP_REDIS_PASSWORD" in before.stderr + before.stdout

    done = _secrets("--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if not line.startswith("#"))
    assert set(values) == {"CNCLIP_CONTROL_TOKEN", "CNCLIP_REDIS_PASSWORD"}
    assert all(re.fullmatch(r"[0-9a-f]{48}", v) for v in values.values())
    assert values["CNCLIP_CONTROL_TOKEN"] != values["CNCLIP_REDIS_PASSWORD"]
    assert not any(v in done.stdout + done.stderr for v in values.values())  # never printed

    config = _compose_config(tmp_path)
    assert config.returncode == 0, config.stderr
    assert f"redis://:{values['CNCLIP_REDIS_PASSWORD']}@redis:6379/0" in config.stdout
    assert values["CNCLIP_CONTROL_TOKEN"] in config.stdout

    # An existing .env is kept as it is, byte for byte.
    kept = env_file.read_bytes()
    again = _secrets("--dir", str(tmp_path))
    assert again.returncode == 1 and "is kept as it is" in again.stderr and len(again.stderr.splitlines()) == 1
    assert env_file.read_bytes() == kept


def test_it_runs_on_a_bare_python_and_refuses_a_folder_without_compose(tmp_path):
    shutil.copy(REPO_ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    # -S: no site-packages at all, as on a GPU server before anything is installed.
    bare = _secrets("--dir", str(tmp_path), python=[sys.executable, "-S", "-m", "services.client.compose_env"])
    assert bare.returncode == 0, bare.stderr
    assert (tmp_path / ".env").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = _secrets("--dir", str(empty))
    assert refused.returncode == 2 and "no docker-compose.yml" in refused.stderr
    assert not (empty / ".env").exists()
