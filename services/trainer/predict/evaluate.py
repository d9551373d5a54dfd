"""MUGE text-to-image evaluation: R@1, R@5, R@10 and their mean (mean recall, "MR").

The numbers are those of Chinese-CLIP's MUGE evaluator: a query counts as recalled at K when any
of its ground-truth images is among its first K predicted images; recalls are fractions of all
ground-truth queries, reported in percent, and the mean recall is the mean of the three
fractions times 100 (computed in that order, so results are bit-identical).

A prediction file is rejected under the same conditions as there (unparsable line, missing or
non-integer ``text_id``, missing or non-list ``image_ids``, not exactly k predictions, a
non-integer image id, repeated image ids, a ground-truth query without prediction), plus two
that the original lets through silently: a ``text_id`` predicted twice (the original keeps the
last line) and booleans where integers are expected. Errors name the file and line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

MUGE_K = 10


class EvaluationError(ValueError):
    """A ground-truth or prediction file that cannot be evaluated."""


class PredictionFileError(EvaluationError):
    pass


class GroundTruthError(EvaluationError):
    pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(line: str, limit: int = 200) -> str:
    return line if len(line) <= limit else line[:limit] + "..."


def read_ground_truth(path: str | os.PathLike) -> dict[int, list[int]]:
    """``{text_id: [image_id, ...]}`` from a MUGE ``*_texts.jsonl`` (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise GroundTruthError(f"ground-truth file not found: {path}")
    reference: dict[int, list[int]] = {}
    with path.open(encoding="utf-8") as fin:
        for number, raw in enumerate(fin, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}, line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GroundTruthError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or "text_id" not in obj:
                raise GroundTruthError(f"{where}: no text_id")
            text_id = obj["text_id"]
            if not _is_int(text_id):
                raise GroundTruthError(f"{where}: text_id {text_id!r} is not an integer")
            if "image_ids" not in obj:
                raise GroundTruthError(f"{where}: text_id {text_id} has no image_ids (ground truth)")
            image_ids = obj["image_ids"]
            if not isinstance(image_ids, list) or not all(_is_int(i) for i in image_ids):
                raise GroundTruthError(f"{where}: image_ids of text_id {text_id} must be a list of integers")
            if text_id in reference:
                raise GroundTruthError(f"{where}: text_id {text_id} appears twice")
            reference[text_id] = image_ids
    if not reference:
        raise GroundTruthError(f"{path} holds no queries")
    return reference


def check_prediction(obj: Any, k: int, where: str, line: str = "") -> tuple[int, list[int]]:
    """Validate one parsed prediction line; returns (text_id, image_ids)."""
    if not isinstance(obj, dict) or "text_id" not in obj:
        raise PredictionFileError(f"{where}: no text_id in {_short(line)!r}")
    text_id = obj["text_id"]
    if not _is_int(text_id):
        raise PredictionFileError(
            f"{where}: text_id {text_id!r} must be an integer (not a string or other type)"
        )
    if "image_ids" not in obj:
        raise PredictionFileError(f"{where}: text_id {text_id} has no image_ids")
    image_ids = obj["image_ids"]
    if not isinstance(image_ids, list):
        raise PredictionFileError(f"{where}: image_ids of text_id {text_id} is not a list")
    if len(image_ids) != k:
        raise PredictionFileError(
            f"{where}: text_id {text_id} has {len(image_ids)} predicted image_ids, {k} are required"
        )
    for rank, image_id in enumerate(image_ids, start=1):
        if not _is_int(image_id):
            raise PredictionFileError(
                f"{where}: text_id {text_id} has a non-integer image_id {image_id!r} at rank {rank}"
            )
    if len(set(image_ids)) != k:
        seen: set[int] = set()
        repeated = next(i for i in image_ids if i in seen or seen.add(i))
        raise PredictionFileError(
            f"{where}: text_id {text_id} predicts image_id {repeated} more than once"
        )
    return text_id, image_ids


def read_predictions(
    path: str | os.PathLike, reference: Mapping[int, Any], k: int = MUGE_K
) -> dict[int, list[int]]:
    """``{text_id: [k image ids]}`` from a predictions jsonl, checked against ``reference``."""
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"predictions file not found: {path}")
    predictions: dict[int, list[int]] = {}
    first_line: dict[int, int] = {}
    with path.open(encoding="utf-8") as fin:
        for number, raw in enumerate(fin, start=1):
            line = raw.strip()
            where = f"{path}, line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                shown = "an empty line" if not line else repr(_short(line))
                raise PredictionFileError(f"{where}: cannot parse {shown} as JSON ({exc.msg})") from exc
            text_id, image_ids = check_prediction(obj, k, where, line)
            if text_id in predictions:
                raise PredictionFileError(
                    f"{where}: text_id {text_id} is predicted twice (first on line {first_line[text_id]})"
                )
            predictions[text_id] = image_ids
            first_line[text_id] = number
    missing = [qid for qid in reference if qid not in predictions]
    if missing:
        shown = ", ".join(str(q) for q in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise PredictionFileError(
            f"{path}: {len(missing)} ground-truth text_ids have no prediction: {shown}"
        )
    return predictions


def recall_metrics(
    reference: Mapping[int, Sequence[int]], predictions: Mapping[int, Sequence[int]]
) -> dict[str, float]:
    """R@1/5/10 and mean recall in percent, over every ground-truth query."""
    if not reference:
        raise EvaluationError("no ground-truth queries to evaluate")
    hits = {1: 0, 5: 0, 10: 0}
    for qid, truth in reference.items():
        if qid not in predictions:
            raise EvaluationError(f"text_id {qid} has no prediction")
        ranked = list(predictions[qid])
        truth_set = set(truth)
        for cutoff in hits:
            if any(image_id in truth_set for image_id in ranked[:cutoff]):
                hits[cutoff] += 1
    n = len(reference)
    r1, r5, r10 = hits[1] * 1.0 / n, hits[5] * 1.0 / n, hits[10] * 1.0 / n
    mean_recall = (r1 + r5 + r10) / 3.0
    return {
        "r1": r1 * 100,
        "r5": r5 * 100,
        "r10": r10 * 100,
        "mr": mean_recall * 100,
        "num_queries": n,
    }


def evaluate_files(
    ground_truth: str | os.PathLike, predictions: str | os.PathLike, k: int = MUGE_K
) -> dict[str, float]:
    reference = read_ground_truth(ground_truth)
    return recall_metrics(reference, read_predictions(predictions, reference, k))


def plain_id(value: Any) -> Any:
    """MUGE ids are integers (numpy integers included); other ids are written unchanged."""
    return int(value) if hasattr(value, "__index__") and not isinstance(value, bool) else value


def write_predictions(path: str | os.PathLike, rows: Iterable[tuple[int, Sequence[int]]]) -> Path:
    """One ``{"text_id", "image_ids"}`` JSON object per line, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as fout:
        for text_id, image_ids in rows:
            fout.write(json.dumps({"text_id": plain_id(text_id), "image_ids": [plain_id(i) for i in image_ids]}))
            fout.write("\n")
    os.replace(partial, path)
    return path
