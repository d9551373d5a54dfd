"""A browser session's cookies on disk, private to the crawler.

The file is written atomically (temporary file, then rename) with mode 0600 in a 0700
directory: the cookies are the keys to a shopping account. They never go to Redis and no
service serves them. To share one login across ranks, point every rank at the same file on a
common volume (``CNCLIP_CRAWLER_SHARE_LOGIN=true``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class CookieStore:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def for_rank(cls, state_dir: Path, site: str, rank: int, shared: bool) -> "CookieStore":
        name = f"{site}-shared.json" if shared else f"{site}-rank{rank}.json"
        return cls(state_dir / "cookies" / name)

    def mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def load(self) -> list[dict[str, Any]] | None:
        """The saved cookies without those already expired; None when there is no file."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged file is as good as none: the user scans again
        now = time.time()
        cookies = data.get("cookies", []) if isinstance(data, dict) else []
        return [c for c in cookies if isinstance(c, dict) and c.get("expiry", now + 1) > now]

    def save(self, cookies: list[dict[str, Any]]) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"saved_at": time.time(), "cookies": cookies}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
