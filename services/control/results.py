"""What a prediction job retrieved, query by query, and how another job on the same texts
differs: the data of ``/jobs/{id}/results``.

A query's *first hit* is the rank (1-based) of its first ground-truth image among the
predicted ones, or None when none is predicted. Comparing job A with job B, a query *improved*
when B finds its first hit earlier than A (a miss counts as rank top_k + 1), got *worse* when
later; ``change`` = A's rank - B's rank (positive: B is better).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.jobs import JobRecord
from shared.jobspec import PathOutsideDataRoot, resolve_under
from shared.muge import TextRecord, TextsFileError, read_texts

Filter = Literal["all", "hits", "misses", "misses10", "improved", "worse", "changed"]
Sort = Literal["file", "first_hit", "change"]
MAX_PREDICTION_LINES = 1_000_000


class ResultsUnavailable(ValueError):
    """The job has no results to show (the message says why; a 409)."""


@dataclass
class JobResults:
    job_id: str
    texts: list[TextRecord]
    ranked: dict[str, list[Any]]  # text id (as a string) -> predicted image ids
    gallery: str | None  # relative to the data root, for thumbnails
    top_k: int


def _key(text_id: Any) -> str:
    return str(text_id)


def _read_predictions(path: Path) -> dict[str, list[Any]]:
    ranked: dict[str, list[Any]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if number > MAX_PREDICTION_LINES:
                raise ResultsUnavailable(f"{path.name} has more than {MAX_PREDICTION_LINES} lines")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ranked[_key(row["text_id"])] = list(row["image_ids"])
            except (ValueError, KeyError, TypeError):
                raise ResultsUnavailable(f"{path.name}, line {number}: not a prediction line") from None
    return ranked


def load(record: JobRecord, data_root: Path) -> JobResults:
    """The texts and predictions of a finished prediction job (files under the data root)."""
    if record.kind != "predict":
        raise ResultsUnavailable(f"job {record.id} is a {record.kind} job; results are a prediction job's")
    if record.state != "succeeded":
        raise ResultsUnavailable(f"job {record.id} is {record.state}; results exist once it has succeeded")
    spec = record.spec
    if not spec.text_data:
        raise ResultsUnavailable(f"job {record.id} names no texts file")
    try:
        texts_path = resolve_under(data_root, spec.text_data)
        output = Path(record.result.get("predictions") or spec.output_path(data_root, record.id)).resolve()
        root = Path(data_root).resolve()
        if root not in output.parents:
            raise PathOutsideDataRoot(f"{output} is outside the data root")
    except (PathOutsideDataRoot, ValueError) as exc:
        raise ResultsUnavailable(f"job {record.id}: {exc}") from None
    if not output.is_file():
        raise ResultsUnavailable(f"job {record.id}: its predictions file {output.name} is gone")
    try:
        texts = read_texts(texts_path)
    except (OSError, TextsFileError) as exc:
        raise ResultsUnavailable(f"job {record.id}: its texts cannot be read: {exc}") from None
    return JobResults(record.id, texts, _read_predictions(output), spec.image_data, spec.top_k)


def first_hit(ranked: list[Any], truth: tuple[Any, ...] | None) -> int | None:
    if not truth:
        return None
    wanted = {str(t) for t in truth}
    return next((rank for rank, image_id in enumerate(ranked, start=1) if str(image_id) in wanted), None)


def _summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    judged = [r for r in rows if r["truth"]]
    hits = [r[key]["first_hit"] for r in judged]
    n = max(len(judged), 1)
    return {"queries": len(rows), "with_truth": len(judged),
            **{f"r{k}": round(100 * sum(1 for h in hits if h is not None and h <= k) / n, 2) for k in (1, 5, 10)}}


def view(base: JobResults, other: JobResults | None, *, filter: Filter = "all", sort: Sort = "file",
         limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """One page of rows plus the summary of all rows."""
    if other is not None:
        mine = {_key(t.text_id) for t in base.texts}
        theirs = {_key(t.text_id) for t in other.texts}
        if mine != theirs:
            raise ResultsUnavailable(f"jobs {base.job_id} and {other.job_id} predicted different texts "
                                     f"({len(mine ^ theirs)} text ids differ)")
    rows = []
    for text in base.texts:
        key = _key(text.text_id)
        ranked = base.ranked.get(key, [])
        row: dict[str, Any] = {"text_id": text.text_id, "text": text.text, "truth": list(text.image_ids or ()),
                               "base": {"ranked": ranked, "first_hit": first_hit(ranked, text.image_ids)}}
        if other is not None:
            theirs_ranked = other.ranked.get(key, [])
            row["other"] = {"ranked": theirs_ranked, "first_hit": first_hit(theirs_ranked, text.image_ids)}
            miss = max(base.top_k, other.top_k) + 1
            before = row["base"]["first_hit"] or miss
            after = row["other"]["first_hit"] or miss
            row["change"] = before - after if text.image_ids else 0
        rows.append(row)
    summary = {"base": _summary(rows, "base")}
    if other is not None:
        summary["other"] = _summary(rows, "other")
        summary.update(improved=sum(1 for r in rows if r["change"] > 0),
                       worse=sum(1 for r in rows if r["change"] < 0),
                       same=sum(1 for r in rows if r["change"] == 0))
    chosen = [r for r in rows if _keep(r, filter)]
    if sort == "first_hit":
        chosen.sort(key=lambda r: (r["base"]["first_hit"] is None, r["base"]["first_hit"] or 0))
    elif sort == "change" and other is not None:
        chosen.sort(key=lambda r: -abs(r["change"]))
    return {"job": base.job_id, "compare": other.job_id if other else None, "gallery": base.gallery,
            "compare_gallery": other.gallery if other else None, "top_k": base.top_k,
            "filter": filter, "sort": sort, "summary": summary, "total": len(chosen), "offset": offset,
            "rows": chosen[offset:offset + limit]}


def _keep(row: dict[str, Any], filter: Filter) -> bool:
    hit = row["base"]["first_hit"]
    if filter == "hits":
        return hit is not None
    if filter == "misses":
        return bool(row["truth"]) and hit is None
    if filter == "misses10":
        return bool(row["truth"]) and (hit is None or hit > 10)
    if filter in ("improved", "worse", "changed"):
        if "change" not in row:
            raise ResultsUnavailable(f"filter {filter!r} needs a job to compare with (compare=ID)")
        change = row["change"]
        return change > 0 if filter == "improved" else change < 0 if filter == "worse" else change != 0
    return True
