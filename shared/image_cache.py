"""The trainer's cache of crawled images, one folder per split.

Layout: ``{root}/{split}/{key[:2]}/{key}/{i}.jpg`` plus ``meta.json`` holding the original and
normalised query text. The key is a hash of the normalised query (shared.query.query_key), so a
hostile query can never become a path. An entry is written into a temporary folder and renamed
into place, so a reader sees either a whole entry or none, even if the writer dies halfway.
Replacing an entry moves the old one aside first (a directory cannot be renamed over a full
one); a writer killed between the two renames leaves the old entry aside, and ``sweep``
puts it back. ``sweep`` also removes staging folders of killed writers. Hidden names (``.``)
are never entries.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from shared import layout
from shared.image_validation import STORED_RULES, ImageRules, keep_valid_jpegs
from shared.query import normalize_query, query_key

# The cache's folder under the data root unless a command is told otherwise.
DEFAULT_DIRNAME = layout.ONLINE_CACHE
_STAGING = ".staging-"
_ASIDE = ".old-"
# Rename attempts when writers of one query race (each retry means another writer won once).
_PUT_ATTEMPTS = 20


def default_cache_dir(data_root: str | Path | None = None) -> Path:
    """``<data root>/online_cache`` (data root from the settings when not given)."""
    if data_root is None:
        from shared.settings import common_settings

        data_root = common_settings().data_root
    return Path(data_root) / DEFAULT_DIRNAME


class CacheRead(NamedTuple):
    """The valid JPEG bytes of an entry in order, and how many of its files were dropped as
    missing, unreadable or invalid."""

    images: list[bytes]
    invalid: int


class ImageCache:
    def __init__(self, root: str | Path, split: str):
        if not split or "/" in split or split.startswith("."):
            raise ValueError(f"invalid split name {split!r}")
        self.dir = Path(root) / split

    def _entry(self, query: str) -> Path:
        key = query_key(query)
        return self.dir / key[:2] / key

    def get(self, query: str) -> list[Path] | None:
        """Image paths cached for the query in their original order, or None if never cached
        (an entry whose meta.json is unreadable counts as never cached)."""
        entry = self._entry(query)
        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
            return [entry / name for name in meta["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read(self, query: str, rules: ImageRules = STORED_RULES) -> CacheRead | None:
        """The query's cached images as bytes, each re-validated (a file that is missing,
        corrupt or not a JPEG is dropped and counted, never raised); None if never cached."""
        paths = self.get(query)
        if paths is None:
            return None
        found: list[bytes] = []
        for path in paths:
            try:
                found.append(path.read_bytes())
            except OSError:
                continue
        images, invalid = keep_valid_jpegs(found, rules)
        return CacheRead(images, invalid + len(paths) - len(found))

    def __contains__(self, query: str) -> bool:
        return (self._entry(query) / "meta.json").is_file()

    def put(self, query: str, images: list[bytes], **extra: object) -> list[Path]:
        """Store the JPEG bytes for a query, replacing an earlier entry as one step."""
        entry = self._entry(query)
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=entry.parent))
        try:
            files = []
            for i, data in enumerate(images):
                name = f"{i}.jpg"
                (staging / name).write_bytes(data)
                files.append(name)
            meta = {"query": query, "normalized_query": normalize_query(query), "files": files,
                    "created_at": time.time(), **extra}
            (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
            self._move_into_place(staging, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return [entry / name for name in files]

    @staticmethod
    def _move_into_place(staging: Path, entry: Path) -> None:
        for _ in range(_PUT_ATTEMPTS):
            if _rename_unless_taken(staging, entry):
                return
            # Another entry is in the way: move it aside (whole), put ours in its place at once,
            # and only then delete the old one, so the entry is missing for one rename only.
            aside = entry.with_name(f"{_ASIDE}{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
            try:
                entry.rename(aside)
            except FileNotFoundError:
                continue  # another writer moved it first
            try:
                if _rename_unless_taken(staging, entry):
                    return
                # else another writer's entry got in between; go round again
            finally:
                shutil.rmtree(aside, ignore_errors=True)
        raise OSError(f"could not place cache entry {entry} after {_PUT_ATTEMPTS} attempts")

    def sweep(self, min_age_s: float = 600.0) -> dict[str, int]:
        """Cleans up after writers that were killed: staging folders older than ``min_age_s``
        are removed; an entry moved aside whose replacement never arrived is put back.
        Returns counts ``{"staging_removed", "restored", "aside_removed"}``."""
        counts = {"staging_removed": 0, "restored": 0, "aside_removed": 0}
        now = time.time()
        for folder in self.dir.glob("*/.*"):
            try:
                age = now - folder.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < min_age_s:
                continue  # may belong to a writer at work
            if folder.name.startswith(_STAGING):
                shutil.rmtree(folder, ignore_errors=True)
                counts["staging_removed"] += 1
            elif folder.name.startswith(_ASIDE):
                key = folder.name[len(_ASIDE):].split("-", 1)[0]
                target = folder.with_name(key)
                if not target.exists() and (folder / "meta.json").is_file():
                    try:
                        folder.rename(target)
                        counts["restored"] += 1
                        continue
                    except OSError:
                        pass
                shutil.rmtree(folder, ignore_errors=True)
                counts["aside_removed"] += 1
        return counts

    def queries(self) -> list[str]:
        """The original text of every cached query (as recorded, not as hashed)."""
        out = []
        for meta_path in self.dir.glob("*/*/meta.json"):
            if meta_path.parent.name.startswith("."):
                continue  # a writer's staging folder or an entry moved aside
            try:
                out.append(json.loads(meta_path.read_text(encoding="utf-8"))["query"])
            except (OSError, ValueError, KeyError):
                continue
        return sorted(out)


def _rename_unless_taken(staging: Path, entry: Path) -> bool:
    """Renames ``staging`` to ``entry``; False (and nothing done) when an entry is in the way."""
    try:
        staging.rename(entry)
        return True
    except OSError:
        if not entry.exists():
            raise
        return False
