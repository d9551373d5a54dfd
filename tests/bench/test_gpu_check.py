"""The accelerator check (tests/bench/gpu_check.sh) runs green on a CPU at tiny sizes, so the
script is ready whenever a GPU is lent: every step, the set-up that reuses an environment, the
JSON it ends with, and the guard that keeps one failing step from stopping the others."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "bench" / "gpu_check.sh"
STEPS = ("fidelity", "throughput", "train_job", "topk")

pytestmark = pytest.mark.slow


def run_check(work: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    environment = os.environ | {
        "GPU_CHECK_SCALE": "tiny", "GPU_CHECK_WORK": str(work),
        # The interpreter running the tests: the set-up must take it as it is.
        "GPU_CHECK_VENV": sys.prefix,
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path, also on a machine with a GPU
    } | env
    completed = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=environment, capture_output=True, text=True,
                               timeout=2400)
    lines = completed.stdout.strip().splitlines()
    assert lines, completed.stderr[-3000:]
    return completed, json.loads(lines[-1])


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    return run_check(tmp_path_factory.mktemp("gpu_check"))


@pytest.mark.timeout(2700)
def test_every_step_passes_and_the_last_line_holds_every_figure(check):
    completed, report = check
    assert completed.returncode == 0, json.dumps(report)[-4000:]
    assert report["ok"] is True
    assert report["scale"] == "tiny"
    assert report["steps_ok"] == {step: True for step in STEPS}
    assert report["setup"]["environment"] == f"given environment {sys.prefix}"
    assert report["setup"]["imports_ok"] is True and report["setup"]["cuda_available"] is False
    assert report["setup"]["packages"]["torch"] and report["setup"]["packages"]["cn_clip"]


def test_fidelity_against_chinese_clip(check):
    fidelity = check[1]["fidelity"]
    assert fidelity["fp32"]["pass"] and fidelity["bf16"]["pass"]
    for tower in ("image", "text"):
        assert fidelity["fp32"][tower]["max_relative_diff"] <= 1e-4
        assert fidelity["bf16"][tower]["ours_vs_theirs"]["min_cosine"] >= 0.99
    assert fidelity["sdpa_backends_bf16_train"]["math"] == "ok"
    assert fidelity["trainer_bf16_autocast_dtype"] == "torch.bfloat16"


def test_throughput_covers_every_setting_on_both_models(check):
    throughput = check[1]["throughput"]
    settings = {(s["precision"], s["attention"], s["grad_checkpointing"]): s for s in throughput["settings"]}
    assert len(settings) == 8
    for setting in settings.values():
        assert setting["ours"]["samples_per_s"] > 0 and setting["original"]["samples_per_s"] > 0, setting
        assert setting["ours_over_original"] == pytest.approx(
            setting["ours"]["samples_per_s"] / setting["original"]["samples_per_s"], rel=1e-2)
    flops = throughput["flop_count"]
    assert flops["flops_per_sample"] > 0 and "FlopCounterMode" in flops["method"]
    assert flops["flops_per_step_at_batch"] == flops["flops_per_sample"] * throughput["batch"]
    # No peak for a CPU: MFU stays empty rather than made up.
    assert flops["peak_bf16_flops"] is None and throughput["headline"]["ours_mfu"] is None
    largest = throughput["largest_batch"]
    assert largest["tried"] and all(t["fits"] and t["samples_per_s"] > 0 for t in largest["tried"])
    assert largest["largest_fitting"] == largest["tried"][-1]["batch"] > throughput["batch"]


def test_training_job_under_torchrun_gives_a_checkpoint_chinese_clip_loads(check):
    job = check[1]["train_job"]
    assert job["collectives"]["backend"] == "gloo" and job["collectives"]["ok"] is True
    events = job["train"]["events"]
    assert job["train"]["rc"] == 0 and events["result_steps"] == job["max_steps"]
    assert events["validation"]["step"] == job["max_steps"] and events["errors"] == []
    assert events["samples_per_s_median"] > 0
    load = job["chinese_clip_load"]
    assert load["strict_load"] == "ok" and load["checkpoint_step"] == job["max_steps"]
    assert load["features_agree"] is True
    # A validation pass with --online cache: a step on every validation batch.
    online = job["online_cache_validation"]
    assert online["ran"] is True and online["rc"] == 0, online
    assert online["batches"] > 0 and online["steps"] == online["batches"] and online["pairs"] > 0


def test_chunked_topk_agrees_with_the_full_matrix(check):
    topk = check[1]["topk"]
    assert topk["reference"]["agrees"] is True and topk["reference"]["rows_with_same_indices"] == 1.0
    assert topk["default_chunks"]["seconds"] > 0 and topk["large_chunks"]["seconds"] > 0


@pytest.mark.timeout(1800)
def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path):
    completed, report = run_check(tmp_path, GPU_CHECK_ONLY="throughput,topk", GPU_CHECK_PEAK_TFLOPS="fast")
    assert completed.returncode == 1
    assert report["ok"] is False and report["steps_ok"] == {"throughput": False, "topk": True}
    assert "GPU_CHECK_PEAK_TFLOPS must be a positive number" in report["throughput"]["log_tail"]
    assert report["throughput"]["error"] == "no result: exit code 1"


def test_an_unknown_step_is_refused(tmp_path):
    completed = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                               env=os.environ | {"GPU_CHECK_ONLY": "topk,warp_drive", "GPU_CHECK_WORK": str(tmp_path),
                                                 "GPU_CHECK_VENV": sys.prefix, "GPU_CHECK_SCALE": "tiny"})
    assert completed.returncode == 2
    assert "unknown step 'warp_drive'" in completed.stderr


def test_a_step_killed_at_its_limit_is_reported_as_such(tmp_path):
    from tests.bench.gpu_check.report import step_record

    (tmp_path / "topk.rc").write_text("124\n")
    (tmp_path / "topk.log").write_text("chunk 7 of 49\n")
    record = step_record(tmp_path, "topk")
    assert record == {"ok": False, "exit_code": 124, "error": "no result: killed at its time limit",
                      "log_tail": "chunk 7 of 49\n"}
