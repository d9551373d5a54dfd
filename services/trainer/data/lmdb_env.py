"""Read-only LMDB handles shared by every reader of a process (torch-free)."""
from __future__ import annotations

import os
from pathlib import Path

import lmdb

_ENVS: dict[tuple[str, int, int], lmdb.Environment] = {}
_ENVS_PID: int | None = None


def open_readonly(path: str | Path) -> lmdb.Environment:
    """A read-only, lock-free environment shared by every reader in this process.

    LMDB allows one handle per file and process, and handles must not cross a fork: the cache
    is per process, and keyed by the data file's identity so a rebuilt LMDB is reopened."""
    global _ENVS_PID
    if _ENVS_PID != os.getpid():
        _ENVS.clear()  # a forked child: the parent's handles are not ours to use or close
        _ENVS_PID = os.getpid()
    real = os.path.realpath(path)
    stat = os.stat(os.path.join(real, "data.mdb"))
    key = (real, stat.st_ino, stat.st_mtime_ns)
    env = _ENVS.get(key)
    if env is None:
        for stale in [k for k in _ENVS if k[0] == real]:
            _ENVS.pop(stale).close()
        env = lmdb.open(real, readonly=True, lock=False, readahead=False, meminit=False, create=False)
        _ENVS[key] = env
    return env


def close_readonly(prefix: str | Path = "/") -> None:
    """Close this process's shared handles of the environments under ``prefix`` (another
    library, or a writer, may then open the same files)."""
    root = os.path.realpath(prefix)
    for key in [k for k in _ENVS if k[0] == root or k[0].startswith(root.rstrip("/") + "/")]:
        _ENVS.pop(key).close()
