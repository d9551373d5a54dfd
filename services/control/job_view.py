"""How a person recognises a job on the status page: its kind of work and the run it belongs to.

A job record knows ``kind`` (train, predict) and its spec; a user thinks in four kinds, each
with its own panels, and in run names (the folder under ``experiments/``), not in job ids or
checkpoint file names."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

ViewKind = Literal["train", "single", "ensemble", "online", "index"]
VIEW_KIND_LABELS: dict[str, str] = {"train": "training", "single": "prediction",
                                    "ensemble": "ensemble prediction", "online": "test-time online",
                                    "index": "gallery index"}


def view_kind(kind: str, spec: dict[str, Any]) -> ViewKind:
    """train; a single-model prediction; an ensemble (saved matrices or checkpoints); or a
    single-model prediction that learns online from the test queries while it predicts."""
    if kind in ("train", "index"):
        return kind
    if spec.get("mode") in ("ensemble", "ensemble-last"):
        return "ensemble"
    if spec.get("online", "off") != "off":
        return "online"
    return "single"


def run_name(path: str | None) -> str:
    """The run a checkpoint belongs to: ``experiments/<run>/checkpoints/epoch_latest.pt`` ->
    ``<run>``. Any other path is named by its file name, which is the best a person can use."""
    if not path:
        return ""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return parts[-3]
    return parts[-1] if parts else ""


def job_run(job_id: str, kind: str, spec: dict[str, Any]) -> str:
    """The run(s) a job trains or predicts with, for the jobs list."""
    if kind in ("train", "index"):
        return spec.get("name") or job_id  # a run's folder is named after the job by default
    if spec.get("resume"):
        return run_name(spec["resume"])
    members = [run_name(m) for m in spec.get("members") or []]
    if members:
        return " + ".join(members)
    if spec.get("score_dir"):
        return "saved scores in " + str(spec["score_dir"])
    return ""
