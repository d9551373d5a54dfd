"""MUGE file formats and retrieval metrics (plain Python: no torch, no numpy).

The one place for:

- ``{split}_texts.jsonl``: one ``{"text_id", "text", "image_ids"}`` object per line
  (:func:`read_texts`, :func:`read_ground_truth`, :func:`has_ground_truth`);
- predictions jsonl: one ``{"text_id", "image_ids": [k ids, best first]}`` per line
  (:func:`write_predictions`, written atomically; :func:`read_predictions`);
- text-to-image recall (:func:`recall_metrics`), as Chinese-CLIP's MUGE evaluator defines it: a
  query counts as recalled at K when any of its ground-truth images is among its first K
  predicted images; recalls are fractions of all ground-truth queries, reported in percent, and
  the mean recall ("MR") is the mean of the three fractions times 100 (computed in that order,
  so results are bit-identical to the evaluator's).

A prediction file is rejected under the same conditions as there (unparsable line, missing or
non-integer ``text_id``, missing or non-list ``image_ids``, not exactly k predictions, a
non-integer image id, repeated image ids, a ground-truth query without prediction), plus two
that the original lets through silently: a ``text_id`` predicted twice (the original keeps the
last line) and booleans where integers are expected. Errors name the file and line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping, Sequence

from shared.output_files import replace_file

MUGE_K = 10  # predictions per query in a MUGE predictions file
RECALL_KS = (1, 5, 10)


class TextsFileError(ValueError):
    """A texts jsonl that cannot be read."""


class EvaluationError(ValueError):
    """A ground-truth or prediction file that cannot be evaluated."""


class PredictionFileError(EvaluationError):
    pass


class GroundTruthError(TextsFileError, EvaluationError):
    pass


@dataclass(frozen=True)
class TextRecord:
    text_id: int | str
    text: str
    # The ground-truth images; None when the line has none (a test set).
    image_ids: tuple[int | str, ...] | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)


def _short(line: str, limit: int = 200) -> str:
    return line if len(line) <= limit else line[:limit] + "..."


def _json_lines(path: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` of every non-blank line."""
    with path.open(encoding="utf-8") as fin:
        for number, raw in enumerate(fin, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}, line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg})") from None


def read_texts(path: str | os.PathLike, *, ground_truth: bool = False) -> list[TextRecord]:
    """Every record of a texts jsonl, in file order. A malformed line raises
    :class:`TextsFileError` naming the file and line: a query file with holes would make every
    later id and metric wrong.

    Ids are integers or strings and ``image_ids`` is optional. ``ground_truth=True`` applies the
    MUGE evaluator's rules instead: every line has ``image_ids``, every id is an integer,
    ``text`` may be absent, there is at least one query; errors are :class:`GroundTruthError`."""
    path = Path(path)
    error = GroundTruthError if ground_truth else TextsFileError
    if ground_truth and not path.is_file():
        raise GroundTruthError(f"ground-truth file not found: {path}")
    id_ok, id_kind, ids_kind = ((_is_int, "an integer", "integers") if ground_truth
                                else (_is_id, "an integer or a string", "integers or strings"))
    records: list[TextRecord] = []
    seen: set[str] = set()
    for where, obj in _json_lines(path, error):
        if not isinstance(obj, dict) or "text_id" not in obj:
            raise error(f"{where}: no text_id")
        text_id = obj["text_id"]
        if not id_ok(text_id):
            raise error(f"{where}: text_id {text_id!r} must be {id_kind}")
        if "text" not in obj and not ground_truth:
            raise error(f"{where}: text_id {text_id} has no text")
        text = obj.get("text", "")
        if not isinstance(text, str):
            raise error(f"{where}: 'text' of text_id {text_id} must be a string")
        if str(text_id) in seen:
            raise error(f"{where}: text_id {text_id} appears twice")
        seen.add(str(text_id))
        image_ids = obj.get("image_ids")
        if image_ids is None and ground_truth:
            raise error(f"{where}: text_id {text_id} has no image_ids (ground truth)")
        if image_ids is not None and not (isinstance(image_ids, list) and all(id_ok(i) for i in image_ids)):
            raise error(f"{where}: image_ids of text_id {text_id} must be a list of {ids_kind}")
        records.append(TextRecord(text_id, text, None if image_ids is None else tuple(image_ids)))
    if ground_truth and not records:
        raise GroundTruthError(f"{path} holds no queries")
    return records


def read_ground_truth(path: str | os.PathLike) -> dict[int, list[int]]:
    """``{text_id: [image_id, ...]}`` from a MUGE ``*_texts.jsonl`` (the evaluator's rules)."""
    return {r.text_id: list(r.image_ids or ()) for r in read_texts(path, ground_truth=True)}


def has_ground_truth(path: str | os.PathLike) -> bool:
    """Whether a texts jsonl names ground-truth images for its queries (a test set does not).
    A file that cannot be read has none."""
    try:
        return any(record.image_ids for record in read_texts(path))
    except (OSError, TextsFileError):
        return False


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
    """``{text_id: [k image ids]}`` from a predictions jsonl, checked against ``reference``.
    Unlike a texts file, a blank line here is an error (the evaluator fails on it too)."""
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


def plain_id(value: Any) -> Any:
    """MUGE ids are integers (numpy integers included); other ids are written unchanged."""
    return int(value) if hasattr(value, "__index__") and not isinstance(value, bool) else value


def write_predictions(path: str | os.PathLike, rows: Iterable[tuple[Any, Sequence[Any]]]) -> Path:
    """One ``{"text_id", "image_ids"}`` JSON object per line, written atomically: a reader
    never sees half a file, and a crash leaves the previous file in place. A path that is or
    passes through a symbolic link is refused (``LinkedOutput``), never written through."""
    path = Path(path)
    with replace_file(path) as fout:
        for text_id, image_ids in rows:
            fout.write(json.dumps({"text_id": plain_id(text_id), "image_ids": [plain_id(i) for i in image_ids]}))
            fout.write("\n")
    return path


def query_hits(ranked: Sequence[Any], truth: Collection[Any], ks: Sequence[int] = RECALL_KS) -> tuple[bool, ...]:
    """Per cutoff in ``ks``: whether a ground-truth image is among the first K of ``ranked``."""
    truth_set = set(truth)
    return tuple(any(image_id in truth_set for image_id in ranked[:k]) for k in ks)


def recall_metrics(
    reference: Mapping[Any, Collection[Any]], predictions: Mapping[Any, Sequence[Any]]
) -> dict[str, float]:
    """R@1/5/10 and mean recall in percent, over every ground-truth query."""
    if not reference:
        raise EvaluationError("no ground-truth queries to evaluate")
    hits = [0] * len(RECALL_KS)
    for qid, truth in reference.items():
        if qid not in predictions:
            raise EvaluationError(f"text_id {qid} has no prediction")
        for j, hit in enumerate(query_hits(list(predictions[qid]), truth)):
            hits[j] += hit
    n = len(reference)
    r1, r5, r10 = (count * 1.0 / n for count in hits)
    mean_recall = (r1 + r5 + r10) / 3.0
    return {"r1": r1 * 100, "r5": r5 * 100, "r10": r10 * 100, "mr": mean_recall * 100, "num_queries": n}


def evaluate_files(
    ground_truth: str | os.PathLike, predictions: str | os.PathLike, k: int = MUGE_K
) -> dict[str, float]:
    reference = read_ground_truth(ground_truth)
    return recall_metrics(reference, read_predictions(predictions, reference, k))
