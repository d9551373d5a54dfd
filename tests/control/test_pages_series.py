"""What the status panels are built from, without a browser: run names and kinds of jobs, and
the folding of a job's events into its panels' series."""
from __future__ import annotations

import pytest

from services.control.job_view import job_run, run_name, view_kind
from services.control.series import JobSeries
from shared.messages import JobEvent


@pytest.mark.parametrize("path, name", [
    ("experiments/muge-base/checkpoints/epoch_latest.pt", "muge-base"),
    ("/data/experiments/run.7/checkpoints/epoch3.pt", "run.7"),
    ("pretrained_weights/clip_cn_vit-b-16.pt", "clip_cn_vit-b-16.pt"),
    ("", ""), (None, ""),
])
def test_run_name_of_a_checkpoint(path, name):
    assert run_name(path) == name


def test_kinds_and_runs_of_jobs():
    assert view_kind("train", {"online": "live"}) == "train"
    assert view_kind("predict", {"mode": "single", "online": "off"}) == "single"
    assert view_kind("predict", {"mode": "single", "online": "cache"}) == "online"
    assert view_kind("predict", {"mode": "ensemble-last"}) == "ensemble"
    assert job_run("job-1", "train", {"name": None}) == "job-1"
    assert job_run("job-1", "train", {"name": "muge"}) == "muge"
    assert job_run("j", "predict", {"members": ["experiments/a/checkpoints/e.pt",
                                                "experiments/b/checkpoints/e.pt"]}) == "a + b"
    assert job_run("j", "predict", {"mode": "ensemble-last", "score_dir": "npy_save"}) == "saved scores in npy_save"


def fold(*events: tuple[str, float, dict]) -> dict:
    series = JobSeries()
    for kind, ts, data in events:
        series.add(JobEvent(type=kind, ts=ts, data=data))
    return series.view()


def test_phases_last_until_the_next_one_the_result_or_the_end():
    view = fold(("phase", 100.0, {"name": "a"}), ("phase", 103.5, {"name": "b"}),
                ("result", 110.0, {"metrics": {"mr": 1}}), ("phase", 111.0, {"name": "c"}),
                ("state", 120.0, {"state": "succeeded"}))
    assert [(p["name"], p["duration_s"]) for p in view["phases"]] == [("a", 3.5), ("b", 6.5), ("c", 9.0)]
    assert view["ended_at"] == 120.0
    running = fold(("phase", 100.0, {"name": "a"}))
    assert running["phases"][0]["duration_s"] is None and running["ended_at"] is None


def test_ensemble_keeps_fitted_and_fused_apart_and_compares_with_the_best_member():
    ckpt = "experiments/{}/checkpoints/epoch_latest.pt"
    view = fold(
        ("phase", 1, {"name": "ensemble:fit-weights"}),
        ("ensemble", 2, {"member": 0, "checkpoint": ckpt.format("a"), "progress": "encoding"}),
        ("ensemble", 3, {"progress": "fitted", "weights": [0.7, 0.3], "metrics": {"mr": 50},
                         "equal_weights": [0.5, 0.5], "equal_metrics": {"mr": 48}}),
        ("phase", 4, {"name": "ensemble:score-members"}),
        ("ensemble", 5, {"member": 0, "checkpoint": ckpt.format("a"), "weight": 0.7, "progress": "1/2",
                         "metrics": {"r1": 1, "r5": 2, "r10": 3, "mr": 40}}),
        ("ensemble", 6, {"member": 1, "checkpoint": ckpt.format("b"), "weight": 0.3, "progress": "2/2",
                         "metrics": {"r1": 1, "r5": 2, "r10": 3, "mr": 44}}),
        ("ensemble", 7, {"progress": "done", "weights": [0.7, 0.3], "metrics": {"mr": 46.5}}))
    ensemble = view["ensemble"]
    assert [(m["run"], m["status"], m["metrics"]["mr"]) for m in ensemble["members"]] == [("a", "done", 40), ("b", "done", 44)]
    assert ensemble["fit"]["metrics"] == {"mr": 50} and ensemble["fit"]["equal_metrics"] == {"mr": 48}
    assert ensemble["fused"] == {"weights": [0.7, 0.3], "metrics": {"mr": 46.5}}
    assert ensemble["versus_best"] == {"best_member": 1, "best_run": "b", "best_mr": 44, "fused_mr": 46.5, "gain_mr": 2.5}
    scoring = fold(("phase", 1, {"name": "ensemble:fit-weights"}),
                   ("ensemble", 2, {"member": 0, "checkpoint": ckpt.format("a"), "progress": "encoding"}))
    assert scoring["ensemble"]["members"][0]["status"] == "scoring (validation set)"


def test_online_batches_and_passes_count_missing_images_by_reason():
    view = fold(("online", 1, {"split": "valid", "batch": 0, "queries": 8, "pairs": 5,
                               "missing": {"timeout": 2, "leakage": 1}, "wait_ms": 30, "loss": 1.2}),
                ("online", 2, {"split": "valid", "batch": 1, "queries": 8, "pairs": 8, "missing": {}, "wait_ms": 0}),
                ("online_pass", 3, {"split": "valid", "epoch": 1, "pass_index": 1, "queries": 16, "pairs": 13,
                                    "missing": {"timeout": 2, "leakage": 1}, "wall_s": 2.5}))
    assert [(p["index"], p["pairs"], p["missing"]) for p in view["online"]] == [(1, 5, 3), (2, 8, 0)]
    assert view["online_missing"] == {"timeout": 2, "leakage": 1}
    assert view["online_passes"][0]["missing"] == 3 and view["online_passes"][0]["wall_s"] == 2.5


def test_waiting_for_login_ends_when_the_job_moves_on():
    assert fold(("waiting_for_login", 1, {}))["waiting_for_login"] is True
    assert fold(("phase", 1, {"name": "waiting_for_login"}))["waiting_for_login"] is True
    assert fold(("waiting_for_login", 1, {}), ("online", 2, {"pairs": 3}))["waiting_for_login"] is False
