"""Importing the prototype's crawled-image cache into the trainer's cache (torch-free).

The prototype kept one folder per query, named by the query with its spaces and Chinese
punctuation removed, holding ``1.jpg`` .. ``5.jpg`` in crawl order. Two kinds of files in
there are not pictures of the query and are skipped: ``0_n.jpg`` placeholders, and the "fail"
picture the prototype copied in when a download failed (named ``fail*`` or recognised by
being byte-identical across many folders, or given explicitly).

Folders are matched to the texts file's queries by a loose key (NFKC, no whitespace, no
punctuation of any script, case-folded), which is what the prototype's folder names keep of a
query. Images are validated and normalised like crawled ones (shared.image_validation).
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from shared.image_cache import ImageCache
from shared.image_validation import InvalidImage, prepare_image

_NUMBERED = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"^0_\d+\.jpe?g$", re.IGNORECASE)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# A picture found byte for byte in this many folders (or this share of them, if more) is the
# prototype's fail picture: real products repeat across a few similar queries, not across many.
MIN_SHARED_FOLDERS = 5
MIN_SHARED_SHARE = 0.02


def folder_key(text: str) -> str:
    """What a query and its prototype folder name have in common."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text
                    if not ch.isspace() and not unicodedata.category(ch).startswith("P")).casefold()


def read_queries(path: str | Path) -> list[str]:
    """The ``text`` of every line of a MUGE texts jsonl; a bad line raises ValueError naming it."""
    queries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a texts record with a 'text' field ({exc})") from None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{number}: 'text' is not a string")
            queries.append(text)
    return queries


@dataclass
class ImportReport:
    split: str
    cache_dir: str
    folders: int = 0
    imported: int = 0               # queries written to the cache
    images: int = 0
    already_cached: int = 0         # matched queries left as they were (no --overwrite)
    empty_folders: list[str] = field(default_factory=list)
    unmatched_folders: list[str] = field(default_factory=list)
    skipped_files: list[dict] = field(default_factory=list)   # folder, file, reason
    fail_pictures: list[str] = field(default_factory=list)    # sha256 of the recognised ones

    def summary(self) -> dict:
        reasons = Counter(item["reason"].split(":")[0] for item in self.skipped_files)
        return {**self.__dict__, "skipped_by_reason": dict(reasons)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pictures(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(numbered pictures in order, [(file, reason)] of the others)."""
    numbered: list[tuple[int, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        name = path.name
        if _PLACEHOLDER.match(name):
            skipped.append((path, "placeholder"))
        elif name.lower().startswith("fail"):
            skipped.append((path, "fail picture"))
        elif (match := _NUMBERED.match(name)) and int(match.group(1)) >= 1:
            numbered.append((int(match.group(1)), path))
        elif path.suffix.lower() in _IMAGE_SUFFIXES:
            skipped.append((path, "not a numbered picture"))
        else:
            skipped.append((path, "not a picture"))
    return [path for _, path in sorted(numbered)], skipped


def import_prototype_cache(source: str | Path, texts: str | Path, split: str, cache_dir: str | Path,
                           *, overwrite: bool = False,
                           fail_pictures: list[bytes] = ()) -> ImportReport:
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"no prototype cache folder at {source}")
    queries = read_queries(texts)
    cache = ImageCache(cache_dir, split)
    report = ImportReport(split=split, cache_dir=str(Path(cache_dir)))

    by_key: dict[str, list[str]] = defaultdict(list)
    for query in dict.fromkeys(queries):
        by_key[folder_key(query)].append(query)

    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    report.folders = len(folders)
    listed = {folder: _pictures(folder) for folder in folders}

    # The fail picture: given, named, or the same bytes in many folders.
    fail_hashes = {_sha256(data) for data in fail_pictures}
    for _, skipped in listed.values():
        fail_hashes |= {_sha256(p.read_bytes()) for p, reason in skipped if reason == "fail picture"}
    spread: Counter[str] = Counter()
    for pictures, _ in listed.values():
        spread.update({_sha256(p.read_bytes()) for p in pictures})
    needed = max(MIN_SHARED_FOLDERS, int(MIN_SHARED_SHARE * len(folders)))
    fail_hashes |= {digest for digest, n in spread.items() if n >= needed}
    report.fail_pictures = sorted(fail_hashes)

    for folder in folders:
        pictures, skipped = listed[folder]
        report.skipped_files += [{"folder": folder.name, "file": p.name, "reason": reason}
                                 for p, reason in skipped]
        matches = by_key.get(folder_key(folder.name))
        if not matches:
            report.unmatched_folders.append(folder.name)
            continue
        images = []
        for path in pictures:
            data = path.read_bytes()
            if _sha256(data) in fail_hashes:
                report.skipped_files.append({"folder": folder.name, "file": path.name,
                                             "reason": "fail picture"})
                continue
            try:
                images.append(prepare_image(data))
            except InvalidImage as exc:
                report.skipped_files.append({"folder": folder.name, "file": path.name,
                                             "reason": f"invalid: {exc.reason}"})
        if not images:
            report.empty_folders.append(folder.name)
            continue
        for query in matches:
            if query in cache and not overwrite:
                report.already_cached += 1
                continue
            cache.put(query, images, source="prototype", folder=folder.name)
            report.imported += 1
            report.images += len(images)
    return report
