"""The trainer's cache of crawled images, one folder per split.

Layout: ``{root}/{split}/{key[:2]}/{key}/{i}.jpg`` plus ``meta.json`` holding the original and
normalised query text. The key is a hash of the normalised query (shared.query.query_key), so a
hostile query can never become a path. An entry is written into a temporary folder and renamed
into place, so a reader sees either a whole entry or none, even if the writer dies halfway.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from shared.query import normalize_query, query_key


class ImageCache:
    def __init__(self, root: str | Path, split: str):
        if not split or "/" in split or split.startswith("."):
            raise ValueError(f"invalid split name {split!r}")
        self.dir = Path(root) / split

    def _entry(self, query: str) -> Path:
        key = query_key(query)
        return self.dir / key[:2] / key

    def get(self, query: str) -> list[Path] | None:
        """Image paths cached for the query in their original order, or None if never cached."""
        entry = self._entry(query)
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return [entry / name for name in meta["files"]]

    def __contains__(self, query: str) -> bool:
        return (self._entry(query) / "meta.json").is_file()

    def put(self, query: str, images: list[bytes], **extra: object) -> list[Path]:
        """Store the JPEG bytes for a query, replacing an earlier entry as one step."""
        entry = self._entry(query)
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=entry.parent))
        try:
            files = []
            for i, data in enumerate(images):
                name = f"{i}.jpg"
                (staging / name).write_bytes(data)
                files.append(name)
            meta = {"query": query, "normalized_query": normalize_query(query), "files": files,
                    "created_at": time.time(), **extra}
            (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
            if entry.exists():
                old = entry.with_name(entry.name + f".old-{os.getpid()}-{time.monotonic_ns()}")
                entry.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            staging.rename(entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return [entry / name for name in files]

    def queries(self) -> list[str]:
        """The original text of every cached query (as recorded, not as hashed)."""
        out = []
        for meta_path in self.dir.glob("*/*/meta.json"):
            out.append(json.loads(meta_path.read_text(encoding="utf-8"))["query"])
        return sorted(out)
