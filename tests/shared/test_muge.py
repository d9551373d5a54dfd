"""MUGE formats and metrics (shared.muge): texts files, predictions files, recall."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.muge import (
    GroundTruthError,
    TextsFileError,
    has_ground_truth,
    query_hits,
    read_ground_truth,
    read_predictions,
    read_texts,
    recall_metrics,
    write_predictions,
)

ROOT = Path(__file__).resolve().parents[2]


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_texts_keep_order_ids_and_optional_ground_truth(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [
        {"text_id": 7, "text": "红色 T恤", "image_ids": [1, 2]},
        "",
        {"text_id": "q-3", "text": "蓝色 鞋"},
    ])
    records = read_texts(path)
    assert [(r.text_id, r.text, r.image_ids) for r in records] == [(7, "红色 T恤", (1, 2)), ("q-3", "蓝色 鞋", None)]


def test_ground_truth_rules_are_the_evaluators(tmp_path):
    path = write_lines(tmp_path / "gt.jsonl", [{"text_id": 1, "image_ids": [3, 4]}, {"text_id": 2, "image_ids": []}])
    assert read_ground_truth(path) == {1: [3, 4], 2: []}
    write_lines(path, [{"text_id": "1", "text": "a", "image_ids": [3]}])
    read_texts(path)  # a string id is a valid texts file...
    with pytest.raises(GroundTruthError, match="line 1: text_id '1' must be an integer"):
        read_ground_truth(path)  # ...but not MUGE ground truth
    write_lines(path, [{"text_id": 1, "text": "a", "image_ids": [3, "x"]}])
    with pytest.raises(GroundTruthError, match="must be a list of integers"):
        read_ground_truth(path)


def test_a_bad_texts_file_is_a_value_error_naming_the_line(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [{"text_id": 1, "text": "a"}, "{broken"])
    with pytest.raises(TextsFileError, match=r"t.jsonl, line 2: not valid JSON"):
        read_texts(path)
    assert issubclass(TextsFileError, ValueError)


@pytest.mark.parametrize("rows, expected", [
    ([{"text_id": 1, "text": "a"}, {"text_id": 2, "text": "b", "image_ids": [5]}], True),
    ([{"text_id": 1, "text": "a", "image_ids": [5]}], True),
    ([{"text_id": 1, "text": "a"}, {"text_id": 2, "text": "b"}], False),
    ([{"text_id": 1, "text": "a", "image_ids": []}], False),
    (["{broken"], False),
    ([], False),
])
def test_has_ground_truth(tmp_path, rows, expected):
    assert has_ground_truth(write_lines(tmp_path / "t.jsonl", rows)) is expected


def test_has_ground_truth_of_a_missing_file(tmp_path):
    assert has_ground_truth(tmp_path / "nope.jsonl") is False


def test_predictions_round_trip_with_numpy_ids(tmp_path):
    import numpy as np

    rows = [(np.int64(3), list(np.arange(10))), (4, list(range(10, 20)))]
    path = write_predictions(tmp_path / "sub" / "p.jsonl", rows)
    assert read_predictions(path, {3: [0], 4: [1]}) == {3: list(range(10)), 4: list(range(10, 20))}
    assert not list(path.parent.glob("*.partial"))


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path):
    path = write_predictions(tmp_path / "p.jsonl", [(1, list(range(10)))])
    before = path.read_bytes()

    def rows():
        yield 2, list(range(10))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_predictions(path, rows())
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.partial"))


def test_query_hits_and_recall():
    assert query_hits([9, 8, 7, 6, 5, 4], {5}) == (False, True, True)
    assert query_hits([5], {5}) == (True, True, True)
    m = recall_metrics({"a": {1}, "b": {2}}, {"a": [1] + list(range(3, 12)), "b": list(range(3, 13))})
    assert (m["r1"], m["r5"], m["r10"], m["mr"], m["num_queries"]) == (50.0, 50.0, 50.0, 50.0, 2)


def test_muge_needs_no_torch():
    code = "import sys, shared.muge; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
