"""The on-disk format of a gallery index: the one definition its writer (``cnclip index``) and
its reader (the search service) share.

An index is a folder (``experiments/<name>/index/``, shared/layout.py) holding

- ``ids.json``: the image ids, in row order (MUGE ids are integers; others stay strings),
- ``embeddings.npy``: float16 ``(count, dim)``, L2-normalised rows (half the bytes of float32;
  scores differ from float32 by ~1e-3, far below the gaps that order a top-k),
- ``faiss.index``: a FAISS inner-product index over the same rows (row i = ids[i]),
- ``manifest.json``: what made it (``Manifest`` below), written last. An ensemble's index
  holds its members' embeddings side by side (``members``, ``weights``): a query's member
  features, side by side and weighted, score each row by the ensemble's fused score.

It is written into a hidden sibling folder and renamed into place: a build killed midway
leaves a ``.index.tmp-*`` folder that no reader opens, never a half-made ``index/``.

Torch-free; FAISS is imported only where an index is built or read (services with the
trainer's dependencies), so the control service can import the names.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

FORMAT_VERSION = 1
IDS_FILE = "ids.json"
EMBEDDINGS_FILE = "embeddings.npy"
FAISS_FILE = "faiss.index"
MANIFEST_FILE = "manifest.json"
TMP_PREFIX = ".index.tmp-"
OLD_PREFIX = ".index.old-"
RECALL_QUERIES = 1000  # gallery rows used as queries to measure an approximate index's recall@10


class IndexFormatError(ValueError):
    """An index folder that is missing, incomplete or corrupt; the message names the file."""


class Member(BaseModel):
    """One checkpoint that embedded the gallery, and the embedding columns it wrote (``dim``)."""

    checkpoint: str
    checkpoint_sha256: str
    dim: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: int = FORMAT_VERSION
    # One checkpoint; for an ensemble these are null and ``members`` names them.
    checkpoint: str | None
    checkpoint_sha256: str | None
    vision_model: str
    text_model: str
    context_length: int
    gallery: str
    count: int
    dim: int
    created: float
    index_kind: Literal["flat", "ivf", "hnsw"]
    params: dict[str, Any] = {}
    recall_at_10: float | None = None  # of ivf/hnsw against exact search; 1.0 for flat
    # An ensemble: its checkpoints, each embedding's columns side by side in this order, and
    # their weights (summing to 1), applied to a query's features when it is searched.
    members: list[Member] = []
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _one_or_members(self) -> "Manifest":
        if self.members:
            if self.checkpoint is not None or self.weights is None or len(self.weights) != len(self.members):
                raise ValueError("an ensemble's manifest has members with one weight each and no single checkpoint")
            if sum(m.dim for m in self.members) != self.dim:
                raise ValueError(f"the members' dimensions add up to {sum(m.dim for m in self.members)}, not dim")
        elif self.checkpoint is None or self.checkpoint_sha256 is None:
            raise ValueError("a manifest names its checkpoint (or an ensemble's members)")
        return self

    @property
    def checkpoints(self) -> list[Member]:
        """What embedded the gallery: the one checkpoint, or the ensemble's members in order."""
        if self.members:
            return list(self.members)
        return [Member(checkpoint=self.checkpoint, checkpoint_sha256=self.checkpoint_sha256, dim=self.dim)]


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of a transformers folder's files (names and bytes, in
    name order), so a replaced checkpoint is told apart from the one that made the index."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ---- FAISS ---------------------------------------------------------------------------------
def _faiss():
    try:
        import faiss  # faiss-cpu: exact and approximate inner-product search over millions of rows
    except ImportError as exc:  # pragma: no cover - the trainer's extra installs it
        raise RuntimeError("faiss-cpu is not installed (pip install -e '.[trainer]')") from exc
    return faiss


def ivf_defaults(count: int, lists: int | None, probe: int | None) -> tuple[int, int]:
    """Clusters and probes for an IVF index of ``count`` rows. By default ~4 sqrt(n) clusters
    (FAISS's rule of thumb), no more than 39 training rows each can fill, probing an eighth
    (at least 8); a chosen number is kept, up to one cluster per row."""
    if lists is None:
        lists = max(1, min(int(4 * count ** 0.5), count // 39))
    lists = max(1, min(lists, count))
    probe = min(lists, probe or max(8, lists // 8))
    return lists, probe


def build_faiss(vectors: np.ndarray, kind: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index over float32 ``vectors``, and the parameters it used."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    if kind == "flat":
        index, used = faiss.IndexFlatIP(dim), {}
    elif kind == "ivf":
        lists, probe = ivf_defaults(count, params.get("ivf_lists"), params.get("ivf_probe"))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = probe
        used = {"ivf_lists": lists, "ivf_probe": probe}
    elif kind == "hnsw":
        m, ef = int(params.get("hnsw_m") or 32), int(params.get("hnsw_ef_search") or 128)
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * m)
        index.hnsw.efSearch = ef
        used = {"hnsw_m": m, "hnsw_ef_search": ef}
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(vectors)
    if kind == "ivf":
        index.nprobe = used["ivf_probe"]
    return index, used


def recall_at_10(index: Any, vectors: np.ndarray, queries: int = RECALL_QUERIES, seed: int = 0) -> float:
    """Share of exact search's top 10 that ``index`` also returns, over up to ``queries``
    gallery rows taken as queries (1.0 means it agrees with exact search everywhere)."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(10, len(vectors))
    rows = np.random.default_rng(seed).choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    probe = vectors[rows]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(probe, k)
    _, got = index.search(probe, k)
    hits = sum(len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got))
    return round(hits / (len(rows) * k), 4)


# ---- writing -------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def remove_leftovers(target: Path) -> None:
    """Folders of earlier builds that were killed before their rename."""
    if target.parent.is_dir():
        for stale in target.parent.iterdir():
            if stale.name.startswith((TMP_PREFIX, OLD_PREFIX)) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def write_index(target: str | Path, ids: list[Any], vectors: np.ndarray, manifest: Manifest,
                faiss_index: Any) -> Path:
    """Writes the index folder ``target`` beside it, then renames it into place (replacing an
    older index at the same place only once the new one is complete)."""
    faiss = _faiss()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if len(ids) != len(vectors) or manifest.count != len(ids):
        raise ValueError(f"{len(ids)} ids, {len(vectors)} embeddings, manifest count {manifest.count}")
    tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write(tmp / IDS_FILE, json.dumps(list(ids)).encode())
        with open(tmp / EMBEDDINGS_FILE, "wb") as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float16))
            handle.flush()
            os.fsync(handle.fileno())
        faiss.write_index(faiss_index, str(tmp / FAISS_FILE))
        _write(tmp / MANIFEST_FILE, manifest.model_dump_json(indent=1).encode())
        _fsync_dir(tmp)
        old = None
        if target.exists():
            old = target.parent / f"{OLD_PREFIX}{secrets.token_hex(4)}"
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


# ---- reading -------------------------------------------------------------------------------
@dataclass
class GalleryIndex:
    path: Path
    manifest: Manifest
    ids: list[Any]
    embeddings: np.ndarray  # float16 (count, dim), memory-mapped
    faiss_index: Any

    @property
    def nbytes(self) -> int:
        """Memory this index holds (FAISS keeps its own float32 copy of the rows)."""
        return int(self.embeddings.nbytes) + self.manifest.count * self.manifest.dim * 4

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the top ``k`` rows per float32 query (rows -1 past the gallery)."""
        return self.faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.manifest.count))


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise IndexFormatError(f"no index at {path}")
    if not file.is_file():
        raise IndexFormatError(f"{file} is missing: not a complete index")
    try:
        return Manifest.model_validate_json(file.read_bytes())
    except ValidationError as exc:
        raise IndexFormatError(f"{file} is corrupt: {exc.errors()[0]['msg']}") from None


def load_index(path: str | Path) -> GalleryIndex:
    """Reads and checks an index folder; IndexFormatError names what is wrong."""
    faiss = _faiss()
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.format != FORMAT_VERSION:
        raise IndexFormatError(f"{path} has index format {manifest.format}; this build reads {FORMAT_VERSION}")
    try:
        ids = json.loads((path / IDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path / IDS_FILE} is missing or corrupt: {exc}") from None
    try:
        embeddings = np.load(path / EMBEDDINGS_FILE, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path / EMBEDDINGS_FILE} is missing or corrupt: {exc}") from None
    try:
        index = faiss.read_index(str(path / FAISS_FILE))
    except Exception as exc:  # FAISS raises RuntimeError for any unreadable file
        raise IndexFormatError(f"{path / FAISS_FILE} is missing or corrupt: {str(exc).splitlines()[0][:200]}") from None
    expected = (manifest.count, manifest.dim)
    if not isinstance(ids, list) or len(ids) != manifest.count or embeddings.shape != expected \
            or embeddings.dtype != np.float16 or index.ntotal != manifest.count or index.d != manifest.dim:
        raise IndexFormatError(
            f"{path} does not agree with its manifest ({manifest.count} x {manifest.dim}): {len(ids)} ids, "
            f"embeddings {tuple(embeddings.shape)} {embeddings.dtype}, FAISS {index.ntotal} x {index.d}")
    if manifest.index_kind == "ivf" and "ivf_probe" in manifest.params:
        index.nprobe = int(manifest.params["ivf_probe"])
    if manifest.index_kind == "hnsw" and "hnsw_ef_search" in manifest.params:
        index.hnsw.efSearch = int(manifest.params["hnsw_ef_search"])
    return GalleryIndex(path, manifest, ids, embeddings, index)


def now() -> float:
    return round(time.time(), 3)
