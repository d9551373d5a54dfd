"""Guarantees that a browser session leaves no process behind, however its owner dies.

The owner (a Celery pool process) starts this program with a pipe on its stdin and puts
chromedriver (and so Chromium, which inherits the group) into this program's process group;
other processes it cannot place in the group (Xvfb, started by pyvirtualdisplay) are announced
by pid on the pipe, and so are the browser profile directories. When the pipe closes -- a clean
exit, an exception, SIGKILL, a hard time limit, anything that ends the owner -- the kernel
closes its end, this program reads EOF, kills the announced processes and the whole group,
deletes the directories, and exits.

A pipe is used rather than PR_SET_PDEATHSIG because the death signal fires when the *thread*
that started the child exits, not the process, and cannot reach grandchildren.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time


def _start_time(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/<pid>/stat): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _kill(pid: int, started: str | None) -> None:
    if started is None or _start_time(pid) != started:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def main() -> None:
    # Terminal signals go to the foreground group; this process must outlive its owner.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    announced: list[tuple[int, str | None]] = []
    directories: list[str] = []
    for line in sys.stdin:
        kind, _, value = line.rstrip("\n").partition(" ")
        if kind == "pid" and value.isdigit():
            announced.append((int(value), _start_time(int(value))))
        elif kind == "dir" and value:
            directories.append(value)
    for pid, started in announced:
        _kill(pid, started)
    pgid = os.getpgid(0)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        members = _group_members(pgid)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    # The browser profiles of the killed sessions.
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    os.killpg(pgid, signal.SIGKILL)


class Reaper:
    """The owner's handle on the reaper process."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.crawler.reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
            close_fds=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )

    @property
    def pgid(self) -> int:
        return self._proc.pid

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def announce(self, pid: int) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"pid {pid}\n".encode())
        self._proc.stdin.flush()

    def announce_directory(self, path: str) -> None:
        """A directory to delete once the processes are gone (a browser profile)."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"dir {path}\n".encode())
        self._proc.stdin.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Kill everything in the group now and wait for the reaper to finish."""
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


if __name__ == "__main__":
    main()
