"""Conversion of MUGE files into LMDB, laid out byte for byte as Chinese-CLIP lays it out.

Layout of ``{out_dir}/{split}``:
- ``imgs``: key ``str(image_id)`` (UTF-8) -> the base64 JPEG string exactly as it stands in the
  TSV (UTF-8 bytes); key ``num_images`` -> the count as a decimal string.
- ``pairs``: key ``str(index)`` -> ``pickle.dumps((image_id, text_id, text))`` with the ids as
  the JSON file has them; one entry per (text, image) pair, in file order; key
  ``num_samples`` -> the count as a decimal string.

Unlike a plain copy, every line is checked (strict base64; the image's signature and end
marker, or a full decode; JSON fields and types; duplicate ids; texts pointing to images the
split lacks). Bytes after an image's end marker are reported as a note and the image is kept
as it stands, as Chinese-CLIP keeps it. A bad line is reported with its file and line
number and either skipped (``on_error="skip"``) or, with ``on_error="fail"``, the whole build
fails after all problems have been collected, leaving any earlier LMDB untouched. A split is
written to a temporary folder and moved into place only when it is complete.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import pickle
import queue
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import lmdb
from PIL import Image

from shared.image_validation import InvalidImage, end_marker_format, trailing_bytes

OnError = Literal["skip", "fail"]
# "structure": strict base64 everywhere plus the image's signature and end marker (cheap; what
# real broken files fail: cut-short downloads, HTML error pages); "decode": that, and every
# image decoded too. Formats other than JPEG and PNG are always decoded.
Verify = Literal["structure", "decode"]
MAP_SIZE = 1 << 40  # address space only: LMDB files grow with their content
COMMIT_BYTES = 8 << 20  # small write transactions commit faster than one huge one
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
_BASE64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_="
_HEAD_CHARS = 64  # base64 characters decoded to read a signature (48 bytes)
_TAIL_CHARS = 64


@dataclass
class Problem:
    split: str
    file: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


@dataclass
class SplitReport:
    split: str
    lmdb_dir: str
    image_lines: int = 0
    images_written: int = 0
    text_lines: int = 0
    texts_written: int = 0
    pairs_written: int = 0
    blank_lines: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    # Information, not problems: images kept with bytes after their end marker.
    notes: list[Problem] = field(default_factory=list)

    @property
    def images_skipped(self) -> int:
        return self.image_lines - self.images_written

    @property
    def texts_skipped(self) -> int:
        return self.text_lines - self.texts_written


@dataclass
class BuildReport:
    on_error: str
    splits: dict[str, SplitReport] = field(default_factory=dict)
    failed: bool = False

    @property
    def problems(self) -> list[Problem]:
        return [p for report in self.splits.values() for p in report.problems]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def to_dict(self) -> dict[str, Any]:
        splits = {}
        for name, report in self.splits.items():
            entry = asdict(report)
            entry["images_skipped"] = report.images_skipped
            entry["texts_skipped"] = report.texts_skipped
            entry["problem_counts"] = _count_kinds(report.problems)
            entry["note_counts"] = _count_kinds(report.notes)
            splits[name] = entry
        return {
            "on_error": self.on_error,
            "failed": self.failed,
            "problem_count": len(self.problems),
            "problem_counts": _count_kinds(self.problems),
            "splits": splits,
        }

    def summary(self) -> str:
        lines = []
        for name, r in self.splits.items():
            lines.append(
                f"{name}: {r.images_written}/{r.image_lines} images, {r.texts_written}/{r.text_lines} texts, "
                f"{r.pairs_written} pairs, {len(r.problems)} problems, {len(r.notes)} notes, "
                f"{r.blank_lines} blank lines -> {r.lmdb_dir}"
            )
            lines.extend(f"  {problem}" for problem in r.problems)
            lines.extend(f"  note: {note}" for note in r.notes)
        if self.failed:
            lines.append("build failed: nothing was written (on_error=fail)")
        return "\n".join(lines)


def _count_kinds(problems: Iterable[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    return counts


class LmdbBuildError(Exception):
    """The build found bad lines and was asked to fail on them; ``report`` lists them all."""

    def __init__(self, report: BuildReport) -> None:
        self.report = report
        problems = report.problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} bad lines in the MUGE files:\n{shown}{more}")


# ---------------------------------------------------------------- checks

def decode_base64(text: bytes | str) -> bytes:
    """Base64 in either alphabet (MUGE files use both), strictly: stray characters or a
    wrong length raise ``binascii.Error`` instead of decoding to garbage."""
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    return base64.b64decode(raw.translate(_TO_STANDARD_ALPHABET), validate=True)


def base64_problem(b64: bytes) -> str | None:
    """Why ``b64`` is not strict base64 (either alphabet), without decoding it all."""
    if b64.translate(None, _BASE64_CHARS):
        return "characters outside the base64 alphabet"
    if len(b64) % 4:
        return f"length {len(b64)} is not a multiple of 4 (cut short?)"
    body = b64.rstrip(b"=")
    if len(b64) - len(body) > 2 or b"=" in body:
        return "misplaced '=' padding"
    return None


def check_image(data: bytes) -> str | None:
    """None if ``data`` is a complete image, else why not. JPEGs are decoded at 1/8 scale
    (Pillow's draft mode): every byte of the compressed stream is still read, so truncation
    and corruption are caught, at a fraction of the cost of a full decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
    except Image.DecompressionBombError as exc:
        return f"image too large: {exc}"
    except Exception as exc:  # Pillow raises many types for bad data; all mean "unusable"
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class ImageVerdict:
    """What checking one image line found."""

    problem: tuple[str, str] | None = None  # (kind, reason) when the image is unusable
    trailing_bytes: int = 0  # bytes after the image's end marker: kept, reported as a note


IMAGE_OK = ImageVerdict()


def _structure_verdict(b64: bytes) -> ImageVerdict | None:
    """For base64 that passed ``base64_problem``: checks a JPEG or PNG by its signature and its
    end. Nearly every file ends with its end marker (FFD9 / the IEND chunk), which decoding the
    two ends of the base64 shows; any other is decoded whole and walked to where its image data
    ends (shared.image_validation.trailing_bytes): no end there means cut short, bytes after it
    are a tail to keep. Returns None for other formats, which then get a full decode."""
    # The alphabet and length are already checked: binascii decodes the two ends directly.
    head = binascii.a2b_base64(b64[:_HEAD_CHARS].translate(_TO_STANDARD_ALPHABET))
    found = end_marker_format(head)
    if found is None:
        return None
    tail = (binascii.a2b_base64(b64[-_TAIL_CHARS:].translate(_TO_STANDARD_ALPHABET))
            if len(b64) > _HEAD_CHARS else head)
    if tail.endswith(found[1]):
        return IMAGE_OK
    try:
        return ImageVerdict(trailing_bytes=trailing_bytes(decode_base64(b64)))
    except InvalidImage as exc:
        return ImageVerdict(problem=("undecodable_image", exc.reason))


def check_image_line(b64: bytes, verify: Verify = "structure") -> ImageVerdict:
    """The verdict on the base64 field of a TSV line: usable or not, and any trailing bytes."""
    reason = base64_problem(b64)
    if reason is not None:
        return ImageVerdict(problem=("bad_base64", reason))
    if not b64:
        return ImageVerdict(problem=("bad_base64", "empty image"))
    verdict = _structure_verdict(b64)
    if verdict is not None and (verdict.problem is not None or verify == "structure"):
        return verdict
    reason = check_image(decode_base64(b64))
    if reason is not None:
        return ImageVerdict(problem=("undecodable_image", reason))
    return verdict or IMAGE_OK


# ---------------------------------------------------------------- writing

class _Writer:
    """Writes batches of keys into one LMDB environment from its own thread, so parsing and
    checking the next lines overlaps LMDB's page writes (py-lmdb releases the GIL while it
    writes). Transactions commit every COMMIT_BYTES; durability is one sync at the end, since
    a half-written split is thrown away anyway."""

    _DONE = object()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.commit_at_end = False
        self.thread = threading.Thread(target=self._run, name=f"lmdb-writer-{path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # LMDB write transactions belong to the thread that began them: everything happens here.
        env = lmdb.open(str(self.path), map_size=MAP_SIZE, sync=False, metasync=False, readahead=False)
        txn = env.begin(write=True)
        pending = 0
        done = False
        try:
            while (batch := self.queue.get()) is not self._DONE:
                items, size = batch
                txn.cursor().putmulti(items)
                pending += size
                if pending >= COMMIT_BYTES:
                    txn.commit()
                    txn = env.begin(write=True)
                    pending = 0
            done = True
            if self.commit_at_end:
                txn.commit()
                env.sync(True)
            else:
                txn.abort()
        except BaseException as exc:  # handed to the producer by put_many() or close()
            self.error = exc
            with contextlib.suppress(Exception):
                txn.abort()
            while not done:  # drain so a producer never blocks on a full queue
                done = self.queue.get() is self._DONE
        finally:
            env.close()

    def put_many(self, items: list[tuple[bytes, bytes]], size: int) -> None:
        """Queue ``items`` for writing; ``size`` is roughly their byte count."""
        if self.error is not None:
            raise self.error
        self.queue.put((items, size))

    def close(self, commit: bool = True) -> None:
        self.commit_at_end = commit
        self.queue.put(self._DONE)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _numbered_chunks(path: Path, size: int = 512) -> Iterator[list[tuple[int, bytes]]]:
    """(line number, line) in chunks; plain buffered iteration is the fastest way Python reads
    lines of tens of kilobytes."""
    chunk: list[tuple[int, bytes]] = []
    with open(path, "rb", buffering=1 << 20) as f:
        for item in enumerate(f, start=1):
            chunk.append(item)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


CheckMany = Callable[[list[bytes]], Iterable[ImageVerdict]]


def _write_images(path: Path, writer: _Writer | None, report: SplitReport,
                  check_many: CheckMany, problem, note) -> set[str]:
    """Checks and writes the images of a TSV; returns the ids written."""
    written: set[str] = set()
    for chunk in _numbered_chunks(path):
        parsed = []
        for number, line in chunk:
            raw_id, tab, b64 = line.partition(b"\t")
            b64 = b64.strip()
            if not tab and not raw_id.strip():
                report.blank_lines += 1
                continue
            report.image_lines += 1
            raw_id = raw_id.strip()
            if not tab or not raw_id or not b64 or b"\t" in b64:
                fields = line.strip().count(b"\t") + 1
                problem(path, number, "malformed_line",
                        f"expected 'image_id<TAB>base64', found {fields} field(s)"
                        + (" with one empty" if fields == 2 else ""))
                continue
            parsed.append((number, raw_id, b64))
        items = []
        size = 0
        for (number, raw_id, b64), verdict in zip(parsed, check_many([item[2] for item in parsed])):
            try:
                image_id = raw_id.decode("utf-8")
            except UnicodeDecodeError:
                problem(path, number, "malformed_line", "image id is not UTF-8")
                continue
            if verdict.problem is not None:
                problem(path, number, verdict.problem[0], f"image {image_id}: {verdict.problem[1]}")
                continue
            if image_id in written:
                problem(path, number, "duplicate_image_id", f"image {image_id} appeared on an earlier line")
                continue
            if verdict.trailing_bytes:
                note(path, number, "trailing_bytes",
                     f"image {image_id}: {verdict.trailing_bytes} bytes after its end marker, kept as they are")
            written.add(image_id)
            items.append((raw_id, b64))
            size += len(b64)
        if writer is not None and items:
            writer.put_many(items, size)
    report.images_written = len(written)
    return written


def _id_ok(value: Any) -> bool:
    kind = type(value)
    return kind is int or kind is str


def _write_pairs(path: Path, writer: _Writer | None, report: SplitReport,
                 image_ids: set[str], problem) -> None:
    index = 0
    seen_text_ids: set[str] = set()
    loads, dumps = json.loads, pickle.dumps
    for chunk in _numbered_chunks(path, 2048):
        items: list[tuple[bytes, bytes]] = []
        size = 0
        for number, line in chunk:
            if not line.strip():
                report.blank_lines += 1
                continue
            report.text_lines += 1
            try:
                record = loads(line.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problem(path, number, "malformed_json", str(exc))
                continue
            if type(record) is not dict:
                problem(path, number, "malformed_json", f"expected an object, found {type(record).__name__}")
                continue
            try:
                text_id, text, ids = record["text_id"], record["text"], record["image_ids"]
            except KeyError:
                missing = [name for name in ("text_id", "text", "image_ids") if name not in record]
                problem(path, number, "missing_field", f"no {', '.join(missing)}")
                continue
            if type(text) is not str or not text.strip():
                problem(path, number, "bad_field", f"text {text_id!r}: 'text' must be a non-empty string")
                continue
            if not _id_ok(text_id):
                problem(path, number, "bad_field", "'text_id' must be an integer or a string")
                continue
            if type(ids) is not list or not ids or not all(map(_id_ok, ids)):
                problem(path, number, "bad_field",
                        f"text {text_id}: 'image_ids' must be a non-empty list of integers or strings")
                continue
            key = str(text_id)
            if key in seen_text_ids:
                problem(path, number, "duplicate_text_id", f"text {text_id} appeared on an earlier line")
                continue
            seen_text_ids.add(key)
            kept = 0
            for image_id in ids:
                if str(image_id) not in image_ids:
                    problem(path, number, "missing_image",
                            f"text {text_id} points to image {image_id}, which the split does not hold")
                    continue
                value = dumps((image_id, text_id, text))
                items.append((str(index).encode("utf-8"), value))
                size += len(value)
                index += 1
                kept += 1
            if kept:
                report.texts_written += 1
        if writer is not None and items:
            writer.put_many(items, size)
    report.pairs_written = index


def _process_split(data_dir: Path, split: str, final_dir: Path, work_dir: Path | None,
                   check_many: CheckMany, stop_writing_on_problem: bool) -> SplitReport:
    """Checks one split and, when ``work_dir`` is given, writes its LMDB there."""
    started = time.perf_counter()
    report = SplitReport(split=split, lmdb_dir=str(final_dir))
    images_path = data_dir / f"{split}_imgs.tsv"
    texts_path = data_dir / f"{split}_texts.jsonl"

    def problem(path: Path, line: int, kind: str, message: str) -> None:
        report.problems.append(Problem(split, str(path), line, kind, message))

    def note(path: Path, line: int, kind: str, message: str) -> None:
        report.notes.append(Problem(split, str(path), line, kind, message))

    images_writer = _Writer(work_dir / "imgs") if work_dir is not None else None
    pairs_writer = _Writer(work_dir / "pairs") if work_dir is not None else None
    try:
        image_ids = _write_images(images_path, images_writer, report, check_many, problem, note)
        if stop_writing_on_problem and report.problems and images_writer and pairs_writer:
            # The split will be discarded: keep checking for the report, stop writing.
            images_writer.close(commit=False)
            pairs_writer.close(commit=False)
            images_writer = pairs_writer = None
        _write_pairs(texts_path, pairs_writer, report, image_ids, problem)
        if images_writer is not None and pairs_writer is not None:
            images_writer.put_many([(b"num_images", str(report.images_written).encode("utf-8"))], 0)
            pairs_writer.put_many([(b"num_samples", str(report.pairs_written).encode("utf-8"))], 0)
            images_writer.close(commit=True)
            pairs_writer.close(commit=True)
            images_writer = pairs_writer = None
    finally:
        for writer in (images_writer, pairs_writer):
            if writer is not None:
                writer.close(commit=False)
        report.seconds = round(time.perf_counter() - started, 3)
    return report


def build_lmdb(
    data_dir: str | Path,
    splits: Iterable[str] | str,
    out_dir: str | Path | None = None,
    on_error: OnError = "skip",
    verify: Verify = "structure",
    threads: int = 2,
) -> BuildReport:
    """Convert ``{split}_imgs.tsv`` and ``{split}_texts.jsonl`` of each split in ``data_dir``
    into ``{out_dir}/{split}/imgs`` and ``.../pairs`` (``out_dir`` defaults to
    ``{data_dir}/lmdb``) and return the report.

    With ``on_error="fail"`` any bad line makes it raise ``LmdbBuildError`` (carrying the
    report of every split, all problems included) and no split is replaced. Splits are built in
    temporary folders next to their destination and moved into place only at the end.

    ``verify`` chooses how images are checked ("structure" or "decode", see ``Verify``);
    ``threads`` decode images in parallel with ``verify="decode"``."""
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if verify not in ("structure", "decode"):
        raise ValueError(f"verify must be 'structure' or 'decode', got {verify!r}")
    data = Path(data_dir)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist")
    names = [s.strip() for s in (splits.split(",") if isinstance(splits, str) else splits)]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ValueError("no split given")
    for name in names:
        for path in (data / f"{name}_imgs.tsv", data / f"{name}_texts.jsonl"):
            if not path.is_file():
                raise FileNotFoundError(f"split {name}: {path} does not exist")
    out = Path(out_dir) if out_dir is not None else data / "lmdb"
    out.mkdir(parents=True, exist_ok=True)

    report = BuildReport(on_error=on_error)
    fail = on_error == "fail"
    work_dirs: dict[str, Path] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            def check_many(fields: list[bytes]) -> Iterable[ImageVerdict]:
                if verify == "decode" and threads > 1:
                    # Pillow releases the GIL while decoding, so threads overlap the decodes.
                    return pool.map(lambda b64: check_image_line(b64, "decode"), fields)
                return [check_image_line(b64, verify) for b64 in fields]

            for name in names:
                # Once a failing build has a problem, the rest is only checked, not written.
                write = not (fail and report.problems)
                work = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=out)) if write else None
                if work is not None:
                    work_dirs[name] = work
                report.splits[name] = _process_split(data, name, out / name, work, check_many, fail)
        if fail and report.problems:
            report.failed = True
            raise LmdbBuildError(report)
        for name, work in work_dirs.items():
            final = out / name
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        work_dirs.clear()
    finally:
        for work in work_dirs.values():
            shutil.rmtree(work, ignore_errors=True)
    return report
