"""Ensembles: member score matrices kept and reused, ensemble-last, weight fitting."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from services.trainer.cli import main as cli_main
from services.trainer.predict.ensemble import (
    EnsembleError,
    SavedScores,
    fit_weights,
    fuse,
    load_saved_scores,
    normalise_weights,
    write_sidecar,
)
from shared.muge import read_ground_truth
from tests.trainer.test_predict import TINY, build_muge_data, save_tiny_checkpoint


@pytest.fixture(scope="module")
def muge(tmp_path_factory):
    return build_muge_data(tmp_path_factory.mktemp("muge_ens"), seed=3)


@pytest.fixture()
def members(tmp_path):
    return [save_tiny_checkpoint(tmp_path / f"model-{s}.pt", seed=s) for s in (11, 12)]


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def ensemble_args(muge, members, tmp_path, *extra):
    return ["predict", "--mode", "ensemble", "--members", *map(str, members),
            "--image-data", str(muge["test_lmdb"]), "--text-data", str(muge["test_texts"]),
            "--score-dir", str(tmp_path / "scores"), "--output", str(tmp_path / "ens.jsonl"), *TINY, *extra]


def test_ensemble_keeps_and_reuses_member_scores(tmp_path, muge, members, capsys):
    events = tmp_path / "events.jsonl"
    assert cli_main(ensemble_args(muge, members, tmp_path, "--weights", "3", "1", "--events", str(events))) == 0
    first = last_json(capsys)
    assert first["weights"] == pytest.approx([0.75, 0.25])
    assert [m["reused"] for m in first["members"]] == [False, False]
    score_files = [Path(m["scores"]) for m in first["members"]]
    mtimes = [p.stat().st_mtime_ns for p in score_files]
    predictions = (tmp_path / "ens.jsonl").read_text()

    # The fusion is the top-10 of the weighted sum of the saved member matrices.
    saved = [load_saved_scores(p) for p in score_files]
    fused = 0.75 * np.asarray(saved[0].matrix) + 0.25 * np.asarray(saved[1].matrix)
    order = torch.sort(torch.from_numpy(fused), dim=1, descending=True, stable=True).indices[:, :10]
    expected = [{"text_id": t, "image_ids": [saved[0].image_ids[c] for c in row]}
                for t, row in zip(saved[0].text_ids, order.tolist())]
    assert [json.loads(line) for line in predictions.splitlines()] == expected

    # Re-run: nothing recomputed, same matrices untouched, same predictions.
    assert cli_main(ensemble_args(muge, members, tmp_path, "--weights", "3", "1")) == 0
    second = last_json(capsys)
    assert [m["reused"] for m in second["members"]] == [True, True]
    assert [p.stat().st_mtime_ns for p in score_files] == mtimes
    assert (tmp_path / "ens.jsonl").read_text() == predictions

    # A checkpoint that changes (new mtime) is scored again; the other member is reused.
    later = time.time() + 5
    os.utime(members[1], (later, later))
    assert cli_main(ensemble_args(muge, members, tmp_path, "--weights", "3", "1")) == 0
    third = last_json(capsys)
    assert [m["reused"] for m in third["members"]] == [True, False]
    assert third["members"][1]["scores"] != first["members"][1]["scores"]

    data = [json.loads(line) for line in events.read_text().splitlines()]
    per_member = [e["data"] for e in data if e["type"] == "ensemble" and e["data"].get("weight") is not None
                  and e["data"].get("member") is not None]
    assert [(e["member"], e["progress"]) for e in per_member] == [(0, "1/2"), (1, "2/2")]
    assert per_member[0]["weight"] == pytest.approx(0.75) and "r1" in per_member[0]["metrics"]
    done = [e["data"] for e in data if e["type"] == "ensemble" and e["data"].get("progress") == "done"]
    assert done and done[0]["metrics"] == first["metrics"]


def test_ensemble_last_fuses_saved_matrices_only(tmp_path, muge, members, capsys):
    assert cli_main(ensemble_args(muge, members, tmp_path, "--weights", "1", "2")) == 0
    ensemble = last_json(capsys)
    expected = (tmp_path / "ens.jsonl").read_text()
    for path in members:  # no model is needed any more
        path.unlink()
    out = tmp_path / "last.jsonl"
    assert cli_main(["predict", "--mode", "ensemble-last", "--score-dir", str(tmp_path / "scores"),
                     "--output", str(out)]) == 0
    last = last_json(capsys)
    assert out.read_text() == expected
    assert last["weights"] == pytest.approx(ensemble["weights"]) and last["metrics"] == ensemble["metrics"]

    # Named matrices and other weights: only the first member counts with weights 1, 0.
    scores = [m["scores"] for m in ensemble["members"]]
    assert cli_main(["predict", "--mode", "ensemble-last", "--members", *scores, "--weights", "1", "0",
                     "--output", str(out), "--text-data", str(muge["test_texts"])]) == 0
    only_first = last_json(capsys)
    assert only_first["metrics"] == ensemble["members"][0]["metrics"]

    # cnclip ensemble does the same from the command line.
    assert cli_main(["ensemble", "--score-dir", str(tmp_path / "scores"), "--output", str(tmp_path / "e.jsonl")]) == 0
    assert (tmp_path / "e.jsonl").read_text() == expected


def test_fitted_weights_are_not_worse_than_equal_on_validation(tmp_path, muge, members, capsys):
    args = ensemble_args(muge, members, tmp_path, "--fit-weights-on", str(muge["valid_texts"]),
                         "--fit-images", str(muge["valid_lmdb"]))
    assert cli_main(args) == 0
    result = last_json(capsys)
    fit = result["fit"]
    assert fit["metrics"]["mr"] >= fit["equal_metrics"]["mr"]
    assert fit["equal_weights"] == [0.5, 0.5]
    assert sum(fit["weights"]) == pytest.approx(1.0) and result["weights"] == fit["weights"]
    manifest = json.loads((tmp_path / "scores" / "last_ensemble.json").read_text())
    assert manifest["fit"]["weights"] == fit["weights"]
    # The validation matrices are kept too: fitting again reuses them.
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "scores").glob("*.npy")}
    assert len(kept) == 4 and sum("valid_texts" in p.name for p in kept) == 2
    assert cli_main(args) == 0
    again = last_json(capsys)
    assert again["fit"] == fit
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "scores").glob("*.npy")} == kept


def synthetic_members(tmp_path: Path, n_texts=60, n_images=40, seed=0):
    """An informative member (true image scores high), a noisy one, and ground truth."""
    rng = np.random.default_rng(seed)
    truth = {t: [int(rng.integers(n_images))] for t in range(n_texts)}
    good = rng.standard_normal((n_texts, n_images)).astype(np.float32)
    for t, (img,) in truth.items():
        good[t, img] += 1.5
    noise = rng.standard_normal((n_texts, n_images)).astype(np.float32) * 3
    saved = []
    for name, matrix in (("good", good), ("noise", noise)):
        path = tmp_path / f"{name}.npy"
        np.save(path, matrix)
        write_sidecar(path, list(range(n_texts)), list(range(n_images)), {})
        saved.append(load_saved_scores(path))
    return saved, truth


def test_fit_prefers_the_informative_member(tmp_path):
    saved, truth = synthetic_members(tmp_path)
    fit = fit_weights(saved, truth, query_chunk=16, gallery_chunk=16)
    assert fit.metrics["mr"] > fit.equal_metrics["mr"]
    assert fit.weights[0] > fit.weights[1]
    assert fit.evaluations >= 2


def test_cnclip_ensemble_fits_on_saved_validation_matrices(tmp_path, capsys):
    (tmp_path / "valid").mkdir()
    (tmp_path / "test").mkdir()
    valid, truth = synthetic_members(tmp_path / "valid", seed=1)
    test, test_truth = synthetic_members(tmp_path / "test", seed=2)
    gt = tmp_path / "valid_gt.jsonl"
    gt.write_text("".join(json.dumps({"text_id": t, "image_ids": i}) + "\n" for t, i in truth.items()))
    test_gt = tmp_path / "test_gt.jsonl"
    test_gt.write_text("".join(json.dumps({"text_id": t, "image_ids": i}) + "\n" for t, i in test_truth.items()))
    events = tmp_path / "events.jsonl"
    rc = cli_main(["ensemble", str(test[0].path), str(test[1].path), "--fit-scores", str(valid[0].path),
                   str(valid[1].path), "--fit-ground-truth", str(gt), "--ground-truth", str(test_gt),
                   "--output", str(tmp_path / "p.jsonl"), "--events", str(events)])
    assert rc == 0
    result = last_json(capsys)
    assert result["fit"]["metrics"]["mr"] > result["fit"]["equal_metrics"]["mr"]
    assert result["weights"][0] > result["weights"][1]
    # The fitted weights also help on the test split here (same kind of members).
    _, ranked_equal, _ = fuse(test, None, 10)
    equal_hits = sum(test_truth[t][0] in r[:10] for t, r in enumerate(ranked_equal))
    fitted_hits = sum(test_truth[t][0] in r[:10] for t, r in enumerate(
        [json.loads(line)["image_ids"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]))
    assert fitted_hits >= equal_hits
    types = {json.loads(line)["data"].get("progress") for line in events.read_text().splitlines()}
    assert "fitted" in types and "done" in types


def test_misaligned_or_incomplete_matrices_are_rejected(tmp_path, capsys):
    a = tmp_path / "a.npy"
    np.save(a, np.zeros((3, 12), np.float32))
    write_sidecar(a, [1, 2, 3], list(range(12)), {})
    b = tmp_path / "b.npy"
    np.save(b, np.zeros((3, 12), np.float32))
    write_sidecar(b, [1, 2, 4], list(range(12)), {})
    with pytest.raises(EnsembleError, match="scores other texts"):
        fuse([load_saved_scores(a), load_saved_scores(b)], None, 10)
    c = tmp_path / "c.npy"
    np.save(c, np.zeros((3, 12), np.float32))
    with pytest.raises(EnsembleError, match="has no c.npy.json beside it"):
        load_saved_scores(c)
    write_sidecar(c, [1, 2], list(range(12)), {})
    with pytest.raises(EnsembleError, match=r"shape \(3, 12\) but its sidecar lists 2 texts"):
        load_saved_scores(c)
    assert cli_main(["predict", "--mode", "ensemble-last", "--score-dir", str(tmp_path / "none"),
                     "--output", str(tmp_path / "p.jsonl")]) == 2
    assert "last_ensemble.json not found" in capsys.readouterr().err
    assert cli_main(["ensemble", str(a), str(b), "--output", str(tmp_path / "p.jsonl")]) == 2
    assert "scores other texts" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_weights_are_checked():
    assert normalise_weights([2, 2, 4], 3) == [0.25, 0.25, 0.5]
    assert normalise_weights(None, 4) == [0.25] * 4
    for bad, message in (([1, -1], "non-negative"), ([0, 0], "positive"), ([1], "2 members but 1 weights"),
                         ([float("nan"), 1], "finite")):
        with pytest.raises(EnsembleError, match=message):
            normalise_weights(bad, 2)


def test_equal_weight_metrics_match_ground_truth_file(tmp_path):
    saved, truth = synthetic_members(tmp_path)
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"text_id": t, "image_ids": i}) + "\n" for t, i in truth.items()))
    fit = fit_weights(saved, read_ground_truth(gt), max_rounds=1)
    text_ids, ranked, _ = fuse(saved, fit.equal_weights, 10)
    hits = sum(truth[t][0] in r for t, r in zip(text_ids, ranked))
    assert fit.equal_metrics["r10"] == pytest.approx(100 * hits / len(truth))
    assert isinstance(saved[0], SavedScores)


def test_score_key_follows_content_identity(tmp_path, muge):
    from services.trainer.predict.ensemble import score_key

    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights")
    options = {"vision_model": "tiny", "scores_dtype": "float32"}
    key = score_key(ckpt, muge["test_lmdb"], muge["test_texts"], options)
    assert score_key(ckpt, muge["test_lmdb"], muge["test_texts"], dict(reversed(options.items()))) == key
    later = time.time() + 50
    lock = muge["test_lmdb"] / "imgs" / "lock.mdb"
    lock.touch()
    os.utime(lock, (later, later))  # readers touch LMDB's lock file: not a change of content
    assert score_key(ckpt, muge["test_lmdb"], muge["test_texts"], options) == key
    assert score_key(ckpt, muge["test_lmdb"], muge["test_texts"], {**options, "scores_dtype": "float16"}) != key
    ckpt.write_bytes(b"weights, trained further")
    assert score_key(ckpt, muge["test_lmdb"], muge["test_texts"], options) != key
