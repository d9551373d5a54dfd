"""Runs ``cnclip jobs`` as a user would: a separate process, its exit code and its output."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.control.conftest import REPO_ROOT, TOKEN


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def one_line_error(self) -> str:
        """The error a bad input must give: one line, no traceback, the token nowhere."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in self.err, self.err
        assert TOKEN not in self.out + self.err
        return lines[0]


def environment(url: str | None = None, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    # No local stack's env file is found by accident: the data root is a folder that is not there.
    env.update(CNCLIP_DATA_ROOT="/nonexistent/cnclip-client-test", PYTHONPATH=str(REPO_ROOT))
    if url:
        env["CNCLIP_CONTROL_URL"] = url
    if token:
        env["CNCLIP_CONTROL_TOKEN"] = token
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.trainer.cli", "jobs", *args]


def cnclip(*args: str, url: str | None = None, token: str | None = TOKEN, cwd: Path | None = None,
           stdin: str | None = None, timeout: float = 600, **extra: str) -> Outcome:
    done = subprocess.run(command(*args), cwd=cwd or "/", env=environment(url, token, **extra),
                          input=stdin, capture_output=True, text=True, timeout=timeout)
    return Outcome(done.returncode, done.stdout, done.stderr)
