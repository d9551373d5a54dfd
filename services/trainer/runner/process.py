"""One launched job: a torchrun process in its own session, its output collected line by line,
and a stop that reaches every process the job started.

torchrun starts each worker in a session of its own, so the job's process group alone does not
hold the workers. Every process of a job carries ``CNCLIP_JOB_ID`` in its environment; stopping
a job signals torchrun's group first (torchrun then stops its workers cleanly) and afterwards
kills whatever still carries the marker. psutil reads other processes' environments portably.
"""
from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

JOB_ENV = "CNCLIP_JOB_ID"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """If the runner dies (even by SIGKILL), the kernel sends torchrun SIGTERM, and torchrun
    stops its workers."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class JobProcess:
    def __init__(self, argv: list[str], *, job_id: str, cwd: Path, env: dict[str, str],
                 log_path: Path, on_line: Callable[[str], None] | None = None,
                 tail_lines: int = 40):
        self.job_id = job_id
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._on_line = on_line
        self._lines: collections.deque[str] = collections.deque()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen(
            argv, cwd=str(cwd), env={**env, JOB_ENV: job_id},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent, text=True, errors="replace",
            bufsize=1)
        self.pgid = self.proc.pid  # a new session's leader: its pid is the group id
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self._log.write(line + "\n")
            self._log.flush()
            self.tail.append(line)
            self._lines.append(line)
        self._log.close()

    def new_lines(self) -> list[str]:
        out = []
        while self._lines:
            out.append(self._lines.popleft())
        return out

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_output(self, timeout: float = 5.0) -> None:
        self._reader.join(timeout)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the group, then SIGKILL to the group and every process of the job."""
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.1)
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        kill_job_processes(self.job_id, grace_s=min(grace_s, 5.0))
        self.wait_output()


def job_processes(job_id: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(JOB_ENV) == job_id:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
    return found


def kill_job_processes(job_id: str, grace_s: float = 5.0) -> int:
    """Stops every process on this machine that belongs to the job. Returns how many."""
    procs = job_processes(job_id)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)
