"""Ensembles of several checkpoints: saved score matrices, weighted fusion, weight fitting.

Each member's full text-by-image score matrix is kept on disk (``.npy``, float16 or float32)
next to a JSON sidecar that records the row ids (text ids), the column ids (image ids) and the
identity of what produced it. The file name carries a key derived from the checkpoint (path,
size, modification time), the data files (same) and the model options, so a re-run with the
same inputs reuses the matrix and any change recomputes it.

Fusion is the top-k of the weighted sum of the members' matrices, read block by block.
Weights can be fitted on a validation split: a coordinate search over non-negative weights
(summing to one) that starts from equal weights and accepts only changes that raise the mean
recall, so the fitted weights are never worse than equal weights on that split. Recall is
piecewise constant in the weights, which is why a derivative-free search is used.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shared.muge import plain_id, recall_metrics
from services.trainer.predict.topk import (
    DEFAULT_GALLERY_CHUNK,
    DEFAULT_QUERY_CHUNK,
    TopK,
    fused_topk,
    open_score_matrix,
)

MANIFEST_NAME = "last_ensemble.json"
SIDECAR_SUFFIX = ".json"
FIT_FACTORS = (0.0, 0.25, 0.5, 2.0, 4.0)


class EnsembleError(ValueError):
    """Members, weights or saved matrices that cannot be fused."""


# ------------------------------------------------------------------------------ identities, keys
def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies the content of a file or directory without reading it: absolute path,
    sizes and modification times (of every file below a directory, e.g. an LMDB)."""
    path = Path(path).resolve()
    if path.is_file():
        stat = path.stat()
        return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if path.is_dir():
        files = []
        # LMDB's lock.mdb changes whenever a reader opens the environment: not content.
        for sub in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "lock.mdb"):
            stat = sub.stat()
            files.append([str(sub.relative_to(path)), stat.st_size, stat.st_mtime_ns])
        return {"path": str(path), "files": files}
    raise FileNotFoundError(f"not found: {path}")


def score_key(
    checkpoint: str | os.PathLike,
    image_data: str | os.PathLike,
    text_data: str | os.PathLike,
    options: Mapping[str, Any],
) -> str:
    """A short hash of everything a member's score matrix depends on."""
    identity = {
        "checkpoint": file_identity(checkpoint),
        "images": file_identity(image_data),
        "texts": file_identity(text_data),
        "options": dict(sorted(options.items())),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def member_scores_path(
    score_dir: str | os.PathLike, checkpoint: str | os.PathLike, split_name: str, key: str
) -> Path:
    stem = Path(checkpoint).name.replace(".", "_")
    return Path(score_dir) / f"{stem}-{split_name}-{key}.npy"


# ------------------------------------------------------------------------------- saved matrices
@dataclass
class SavedScores:
    """A saved score matrix (memory-mapped) with its row and column ids."""

    path: Path
    matrix: np.ndarray
    text_ids: list[int]
    image_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


def sidecar_path(matrix_path: str | os.PathLike) -> Path:
    return Path(str(matrix_path) + SIDECAR_SUFFIX)


def write_sidecar(
    matrix_path: str | os.PathLike, text_ids: Sequence[int], image_ids: Sequence[int], meta: Mapping[str, Any]
) -> Path:
    """Row/column ids and provenance of a score matrix, written atomically."""
    path = sidecar_path(matrix_path)
    payload = {"text_ids": [plain_id(i) for i in text_ids], "image_ids": [plain_id(i) for i in image_ids], **meta}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(partial, path)
    return path


def load_saved_scores(matrix_path: str | os.PathLike) -> SavedScores:
    matrix_path = Path(matrix_path)
    matrix = open_score_matrix(matrix_path)
    side = sidecar_path(matrix_path)
    if not side.is_file():
        raise EnsembleError(f"{matrix_path} has no {side.name} beside it (text and image ids); it cannot be fused")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        text_ids, image_ids = meta.pop("text_ids"), meta.pop("image_ids")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EnsembleError(f"{side} is not a valid score sidecar ({exc})") from exc
    if matrix.shape != (len(text_ids), len(image_ids)):
        raise EnsembleError(
            f"{matrix_path} has shape {matrix.shape} but its sidecar lists "
            f"{len(text_ids)} texts and {len(image_ids)} images"
        )
    return SavedScores(matrix_path, matrix, list(text_ids), list(image_ids), meta)


def saved_scores_complete(matrix_path: str | os.PathLike) -> bool:
    """True when a matrix and its sidecar exist and agree (a reusable result)."""
    try:
        load_saved_scores(matrix_path)
    except (EnsembleError, ValueError, FileNotFoundError, OSError):
        return False
    return True


def check_aligned(members: Sequence[SavedScores]) -> tuple[list[int], list[int]]:
    """The common text and image ids; every member must rank the same texts and images in the
    same order (they were computed from the same data files)."""
    if not members:
        raise EnsembleError("no score matrices to fuse")
    first = members[0]
    for other in members[1:]:
        if other.text_ids != first.text_ids:
            raise EnsembleError(f"{other.path} scores other texts than {first.path}; use matrices of the same texts file")
        if other.image_ids != first.image_ids:
            raise EnsembleError(f"{other.path} scores other images than {first.path}; use matrices of the same gallery")
    return first.text_ids, first.image_ids


# --------------------------------------------------------------------------------------- weights
def normalise_weights(weights: Sequence[float] | None, n_members: int) -> list[float]:
    """Weights that sum to one (ranking depends only on their ratios); None means equal."""
    if n_members < 1:
        raise EnsembleError("an ensemble needs at least one member")
    if weights is None or len(weights) == 0:
        return [1.0 / n_members] * n_members
    if len(weights) != n_members:
        raise EnsembleError(f"{n_members} members but {len(weights)} weights")
    values = [float(w) for w in weights]
    if any(not np.isfinite(w) or w < 0 for w in values):
        raise EnsembleError(f"weights must be finite and non-negative, got {values}")
    total = sum(values)
    if total <= 0:
        raise EnsembleError("at least one weight must be positive")
    return [w / total for w in values]


# ---------------------------------------------------------------------------------------- fusion
def fuse(
    members: Sequence[SavedScores],
    weights: Sequence[float] | None,
    k: int,
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    device: str | None = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[int], list[list[int]], TopK]:
    """(text ids, top-k image ids per text, raw TopK) of the weighted sum of the matrices."""
    text_ids, image_ids = check_aligned(members)
    w = normalise_weights(weights, len(members))
    top = fused_topk(
        [m.matrix for m in members], w, k,
        query_chunk=query_chunk, gallery_chunk=gallery_chunk, device=device, progress=progress,
    )
    return text_ids, ids_of(top, image_ids), top


def fused_features(features: Sequence[np.ndarray], weights: Sequence[float] | None) -> np.ndarray:
    """The members' features of the same queries, side by side, each scaled by its normalised
    weight. Against the members' gallery features side by side (``stacked_features``) its inner
    product is sum_i w_i <query_i, image_i>: the fused score ``fuse`` ranks by, so an index over
    the stacked gallery (a gallery index of an ensemble) ranks as the ensemble prediction does."""
    w = normalise_weights(weights, len(features))
    return np.concatenate([np.asarray(f, dtype=np.float32) * wi for f, wi in zip(features, w)], axis=1)


def stacked_features(features: Sequence[np.ndarray]) -> np.ndarray:
    """The members' features of the same images, side by side (the gallery ``fused_features`` scores)."""
    return np.concatenate([np.asarray(f, dtype=np.float32) for f in features], axis=1)


def ids_of(top: TopK, image_ids: Sequence[Any]) -> list[list[Any]]:
    """Gallery row indices to image ids (ids may be integers or strings)."""
    return [[image_ids[i] for i in row] for row in top.indices.tolist()]


# ------------------------------------------------------------------------------------ fitting
@dataclass
class FitResult:
    weights: list[float]
    metrics: dict[str, float]
    equal_weights: list[float]
    equal_metrics: dict[str, float]
    evaluations: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "metrics": self.metrics,
            "equal_weights": self.equal_weights,
            "equal_metrics": self.equal_metrics,
            "evaluations": self.evaluations,
        }


def ensemble_metrics(
    members: Sequence[SavedScores],
    weights: Sequence[float],
    reference: Mapping[int, Sequence[int]],
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    device: str | None = "cpu",
) -> dict[str, float]:
    """MUGE metrics of the fused ranking against ``reference`` ({text_id: image_ids})."""
    text_ids, image_ids = check_aligned(members)
    missing = [t for t in reference if t not in set(text_ids)]
    if missing:
        raise EnsembleError(f"{len(missing)} ground-truth texts are not in the score matrices (e.g. {missing[0]})")
    k = min(10, len(image_ids))
    _, ranked, _ = fuse(members, weights, k, query_chunk=query_chunk, gallery_chunk=gallery_chunk, device=device)
    predictions = dict(zip(text_ids, ranked))
    return recall_metrics(reference, predictions)


def fit_weights(
    members: Sequence[SavedScores],
    reference: Mapping[int, Sequence[int]],
    *,
    max_rounds: int = 4,
    max_evaluations: int = 200,
    factors: Sequence[float] = FIT_FACTORS,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    device: str | None = "cpu",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Coordinate search for the weights that maximise mean recall on ``reference``.

    Starting from equal weights, each round scales one member's weight at a time by each of
    ``factors`` (0 drops the member), renormalises, and keeps the change if mean recall rises
    strictly. Stops after a round without improvement, ``max_rounds`` or ``max_evaluations``.
    """
    n = len(members)
    equal = normalise_weights(None, n)
    seen: dict[tuple[float, ...], dict[str, float]] = {}

    def score(weights: list[float]) -> dict[str, float]:
        key = tuple(round(w, 9) for w in weights)
        if key not in seen:
            seen[key] = ensemble_metrics(
                members, weights, reference,
                query_chunk=query_chunk, gallery_chunk=gallery_chunk, device=device,
            )
            if on_step is not None:
                on_step({"evaluation": len(seen), "weights": weights, "metrics": seen[key]})
        return seen[key]

    equal_metrics = score(equal)
    best_w, best_m = list(equal), equal_metrics
    history = [{"weights": best_w, "mr": best_m["mr"]}]
    if n > 1:
        for _ in range(max_rounds):
            improved = False
            for i in range(n):
                for factor in factors:
                    if len(seen) >= max_evaluations:
                        break
                    candidate = list(best_w)
                    candidate[i] = candidate[i] * factor if candidate[i] > 0 else factor / n
                    if sum(candidate) <= 0:
                        continue
                    candidate = normalise_weights(candidate, n)
                    metrics = score(candidate)
                    if metrics["mr"] > best_m["mr"]:
                        best_w, best_m, improved = candidate, metrics, True
                        history.append({"weights": best_w, "mr": best_m["mr"]})
            if not improved or len(seen) >= max_evaluations:
                break
    return FitResult(best_w, best_m, equal, equal_metrics, len(seen), history)


# --------------------------------------------------------------------------------------- manifest
def write_manifest(score_dir: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Records the last ensemble (member matrices, weights, fit) so `ensemble-last` can redo it."""
    path = Path(score_dir) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(partial, path)
    return path


def read_manifest(score_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(score_dir) / MANIFEST_NAME
    if not path.is_file():
        raise EnsembleError(
            f"{path} not found: run an ensemble prediction with --score-dir {score_dir} first, "
            "or name the score matrices with --members"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["members"][0]["scores"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise EnsembleError(f"{path} is not a valid ensemble manifest ({exc})") from exc
    return manifest
