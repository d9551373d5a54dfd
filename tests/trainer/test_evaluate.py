"""Our MUGE evaluation against Chinese-CLIP's own evaluator (cn_clip.eval.evaluation)."""
from __future__ import annotations

import json
import random

import pytest
from cn_clip.eval import evaluation as original

from services.trainer.cli import main as cli_main
from shared.muge import (
    GroundTruthError,
    PredictionFileError,
    evaluate_files,
    read_ground_truth,
    recall_metrics,
    write_predictions,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def random_case(rng: random.Random, tmp_path, name: str):
    """Ground truth with 1-3 images per query and predictions whose hit rank varies widely."""
    n_images = rng.randint(12, 60)
    n_texts = rng.randint(1, 80)
    text_ids = rng.sample(range(1, 10_000), n_texts)
    truth, preds = [], []
    for tid in text_ids:
        gt = rng.sample(range(n_images), rng.randint(0 if rng.random() < 0.05 else 1, 3))
        truth.append({"text_id": tid, "text": "文本", "image_ids": gt})
        ranked = rng.sample(range(n_images), 10)
        if gt and rng.random() < 0.7:  # place a true image at a random rank
            hit = rng.choice(gt)
            if hit in ranked:
                ranked.remove(hit)
            else:
                ranked.pop()
            ranked.insert(rng.randint(0, 9), hit)
        preds.append({"text_id": tid, "image_ids": ranked})
    rng.shuffle(preds)
    # Extra predictions for unknown queries are ignored by both.
    preds.append({"text_id": 10_001, "image_ids": list(range(10))})
    return write_jsonl(tmp_path / f"{name}_gt.jsonl", truth), write_jsonl(tmp_path / f"{name}_pred.jsonl", preds)


@pytest.mark.parametrize("seed", range(25))
def test_numbers_equal_chinese_clip_evaluator(tmp_path, seed):
    gt, pred = random_case(random.Random(seed), tmp_path, f"case{seed}")
    ours = evaluate_files(gt, pred)
    mean_recall, r1, r5, r10 = original.compute_score(str(gt), str(pred))
    # Exact equality, not approximate: same counts, same arithmetic.
    assert (ours["mr"], ours["r1"], ours["r5"], ours["r10"]) == (mean_recall, r1, r5, r10)


def test_metrics_of_a_known_case():
    reference = {1: [5], 2: [7, 8], 3: [9]}
    predictions = {1: [5, 0, 1, 2, 3, 4, 6, 10, 11, 12], 2: [0, 1, 2, 8, 3, 4, 5, 6, 10, 11], 3: list(range(10, 20))}
    m = recall_metrics(reference, predictions)
    assert m["r1"] == pytest.approx(100 / 3) and m["r5"] == pytest.approx(200 / 3)
    assert m["r10"] == pytest.approx(200 / 3) and m["mr"] == pytest.approx(500 / 9)
    assert m["num_queries"] == 3


GOOD = {"text_id": 1, "image_ids": list(range(10))}
MALFORMED = [
    # (lines of the predictions file, our message pattern)
    (["{not json"], r"line 1: cannot parse '\{not json' as JSON"),
    ([json.dumps(GOOD), ""], r"line 2: cannot parse an empty line as JSON"),
    (['{"image_ids": [0,1,2,3,4,5,6,7,8,9]}'], r"line 1: no text_id"),
    (['{"text_id": "1", "image_ids": [0,1,2,3,4,5,6,7,8,9]}'], r"text_id '1' must be an integer"),
    (['{"text_id": 1}'], r"line 1: text_id 1 has no image_ids"),
    (['{"text_id": 1, "image_ids": 5}'], r"image_ids of text_id 1 is not a list"),
    (['{"text_id": 1, "image_ids": [0,1,2,3,4,5,6,7,8]}'], r"text_id 1 has 9 predicted image_ids, 10 are required"),
    (['{"text_id": 1, "image_ids": [0,1,2,3,4,5,6,7,8,9,10]}'], r"has 11 predicted image_ids"),
    (['{"text_id": 1, "image_ids": [0,1,2,3,"4",5,6,7,8,9]}'], r"non-integer image_id '4' at rank 5"),
    (['{"text_id": 1, "image_ids": [0,1,2,3,4,5,6,7,8,3]}'], r"text_id 1 predicts image_id 3 more than once"),
    ([json.dumps(GOOD)], r"1 ground-truth text_ids have no prediction: 2"),
]


@pytest.mark.parametrize("lines,message", MALFORMED)
def test_malformed_predictions_fail_where_the_original_fails(tmp_path, lines, message):
    gt = write_jsonl(tmp_path / "gt.jsonl", [{"text_id": 1, "image_ids": [3]}, {"text_id": 2, "image_ids": [4]}])
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PredictionFileError, match=message):
        evaluate_files(gt, pred)
    with pytest.raises(Exception):  # the original rejects the same file (its messages differ)
        original.compute_score(str(gt), str(pred))


@pytest.mark.parametrize(
    "lines,message",
    [
        ([json.dumps(GOOD), json.dumps({"text_id": 2, "image_ids": list(range(10))}), json.dumps(GOOD)],
         r"line 3: text_id 1 is predicted twice \(first on line 1\)"),
        (['{"text_id": true, "image_ids": [0,1,2,3,4,5,6,7,8,9]}'], r"text_id True must be an integer"),
    ],
)
def test_stricter_than_the_original(tmp_path, lines, message):
    """Two conditions the original lets through silently (it keeps the last of two lines for
    one query; it takes JSON true for the integer 1) are errors here."""
    gt = write_jsonl(tmp_path / "gt.jsonl", [{"text_id": 1, "image_ids": [3]}, {"text_id": 2, "image_ids": [4]}])
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if "twice" in message:
        original.compute_score(str(gt), str(pred))  # accepted there
    with pytest.raises(PredictionFileError, match=message):
        evaluate_files(gt, pred)


def test_missing_files_and_bad_ground_truth(tmp_path):
    pred = write_predictions(tmp_path / "p.jsonl", [(1, list(range(10)))])
    with pytest.raises(GroundTruthError, match="ground-truth file not found"):
        evaluate_files(tmp_path / "nope.jsonl", pred)
    gt = write_jsonl(tmp_path / "gt.jsonl", [{"text_id": 1, "image_ids": [3]}])
    with pytest.raises(PredictionFileError, match="predictions file not found"):
        evaluate_files(gt, tmp_path / "nope.jsonl")
    for rows, message in [
        (['{"text_id": 1, "text": "x"}'], "has no image_ids"),
        (['{"text_id": 1, "image_ids": [1]}', '{"text_id": 1, "image_ids": [2]}'], "line 2: text_id 1 appears twice"),
        (["[1, 2]"], "line 1: no text_id"),
        (["{oops"], "line 1: not valid JSON"),
        ([""], "holds no queries"),
    ]:
        (tmp_path / "bad_gt.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        with pytest.raises(GroundTruthError, match=message):
            read_ground_truth(tmp_path / "bad_gt.jsonl")


def test_cli_evaluate_prints_and_writes_metrics(tmp_path, capsys):
    gt, pred = random_case(random.Random(99), tmp_path, "cli")
    out = tmp_path / "metrics.json"
    assert cli_main(["evaluate", str(gt), str(pred), "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mean_recall, r1, r5, r10 = original.compute_score(str(gt), str(pred))
    assert printed["mr"] == mean_recall and printed["r1"] == r1 and printed["r10"] == r10
    assert json.loads(out.read_text()) == printed


def test_cli_evaluate_reports_a_bad_file_clearly(tmp_path, capsys):
    gt = write_jsonl(tmp_path / "gt.jsonl", [{"text_id": 1, "image_ids": [3]}])
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"text_id": 1, "image_ids": [1, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n', encoding="utf-8")
    assert cli_main(["evaluate", str(gt), str(pred)]) == 2
    err = capsys.readouterr().err
    assert "predicts image_id 1 more than once" in err and "Traceback" not in err


def test_evaluate_needs_no_torch(tmp_path):
    """Scoring a predictions file is plain Python: it runs where torch is not installed."""
    import subprocess
    import sys
    from pathlib import Path

    gt, pred = random_case(random.Random(7), tmp_path, "notorch")
    code = ("import sys; from services.trainer.cli import main; rc = main(['evaluate', sys.argv[1], sys.argv[2]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(gt), str(pred)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["mr"] == original.compute_score(str(gt), str(pred))[0]
