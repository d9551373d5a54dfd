"""Merges the set-up record and every step's JSON into the one object the check ends with
(printed as the last line, and written in full to WORK/report.json).

A step that wrote no JSON (it crashed, was killed at its time limit, or its process could not
start) is reported with its exit code and the end of its log.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TIMEOUT_EXIT_CODES = {124: "killed at its time limit", 137: "killed (time limit or out of memory)"}


def step_record(work: Path, name: str) -> dict:
    out, rc_file, log = work / f"{name}.json", work / f"{name}.rc", work / f"{name}.log"
    rc = int(rc_file.read_text().strip()) if rc_file.is_file() else None
    if out.is_file():
        record = json.loads(out.read_text())
        record["exit_code"] = rc
        return record
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    reason = TIMEOUT_EXIT_CODES.get(rc, f"exit code {rc}")
    return {"ok": False, "exit_code": rc, "error": f"no result: {reason}", "log_tail": tail}


def pick(record: dict, *path: str):
    """record[path[0]][path[1]]..., or None where any part is missing."""
    for key in path:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def headline(steps: dict) -> dict:
    """The figures to quote, lifted out of the step records."""
    throughput = steps.get("throughput", {})
    first = pick(throughput, "headline") or {}
    return {
        "fidelity_fp32_pass": pick(steps, "fidelity", "fp32", "pass"),
        "fidelity_bf16_pass": pick(steps, "fidelity", "bf16", "pass"),
        "train_samples_per_s_ours": pick(first, "ours", "samples_per_s"),
        "train_samples_per_s_original": pick(first, "original", "samples_per_s"),
        "train_setting": {k: first.get(k) for k in ("precision", "attention", "grad_checkpointing")} | {
            "batch": throughput.get("batch")},
        "ours_over_original": first.get("ours_over_original"),
        "mfu": first.get("ours_mfu"),
        "targets_met": {name: target.get("met") for name, target in (pick(throughput, "targets") or {}).items()
                        if isinstance(target, dict)},
        "largest_batch": pick(throughput, "largest_batch", "largest_fitting"),
        "job_samples_per_s": pick(steps, "train_job", "train", "events", "samples_per_s_median"),
        "job_validation_r1": pick(steps, "train_job", "train", "events", "validation", "r1"),
        "checkpoint_loads_in_chinese_clip": pick(steps, "train_job", "chinese_clip_load", "strict_load"),
        "nccl_collectives_ok": pick(steps, "train_job", "collectives", "ok"),
        "topk_seconds": pick(steps, "topk", "default_chunks", "seconds"),
        "topk_peak_extra_memory_gib": pick(steps, "topk", "default_chunks", "peak_extra_memory_gib"),
    }


def without_tracebacks(value):
    if isinstance(value, dict):
        return {k: without_tracebacks(v) for k, v in value.items() if k != "traceback_tail"}
    if isinstance(value, list):
        return [without_tracebacks(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--steps", required=True, help="comma-separated step names, in order")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--started", type=float, required=True, help="unix time the check began")
    args = parser.parse_args()
    work = Path(args.work)
    setup_file = work / "setup.json"
    setup = json.loads(setup_file.read_text()) if setup_file.is_file() else {"error": "no set-up record"}
    steps = {name: step_record(work, name) for name in args.steps.split(",")}
    steps_ok = {name: record.get("ok") is True for name, record in steps.items()}
    report = {
        "check": "gpu_check", "scale": args.scale, "work": str(work),
        "elapsed_s": round(time.time() - args.started, 1),
        "ok": all(steps_ok.values()) and setup.get("imports_ok") is True,
        "steps_ok": steps_ok, "headline": headline(steps), "setup": setup, **steps,
    }
    (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    # The printed line leaves out tracebacks (they stay in report.json and the step files), so it
    # stays short enough to be read whole from the end of a captured output.
    print(json.dumps(without_tracebacks(report), default=str), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
