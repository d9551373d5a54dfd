"""What a person reads while following a job: one progress line (step, ETA, loss, the last
validation and online figures), a line for each event worth keeping on screen, and a short
summary when the job ends. Events are read through their typed models (shared.messages)."""
from __future__ import annotations

import re
import time
from typing import Any

from shared.messages import JobEvent, Log, OnlineBatch, OnlinePass, OnlineState, Phase, State, TrainStep, Validation


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def number(value: Any) -> str:
    """Figures as people read them: recalls (percent) to one decimal, losses to 4 digits."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.4g}"


def recalls(metrics: dict[str, Any]) -> str:
    names = (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"), ("mr", "MR"))
    parts = [f"{label} {metrics[key]:.1f}" for key, label in names if isinstance(metrics.get(key), (int, float))]
    if isinstance(metrics.get("loss"), (int, float)):
        parts.append(f"loss {number(metrics['loss'])}")
    return "  ".join(parts)


def missing_total(missing: dict[str, int] | None) -> int:
    return sum((missing or {}).values())


class Progress:
    """Folds events into the figures of the progress line."""

    def __init__(self) -> None:
        self.step: TrainStep | None = None
        self.first: tuple[float, int] | None = None  # (ts, step) of the first step event
        self.last_ts: float | None = None
        self.validation: Validation | None = None
        self.online: dict[str, float] = {"pairs": 0, "missing": 0}
        self.online_loss: float | None = None
        self.phase = ""
        self.cause: str | None = None  # the last error the run printed: why it failed

    def add(self, event: JobEvent) -> str | None:
        """Updates the figures; returns a line to keep on screen, if the event deserves one."""
        payload = event.payload()
        if isinstance(payload, TrainStep) and payload.step is not None:
            self.step = payload
            self.last_ts = event.ts
            if self.first is None:
                self.first = (event.ts, payload.step)
            return None
        if isinstance(payload, Validation):
            self.validation = payload
            return f"validation @ step {payload.step}: {recalls(payload.headline())}"
        if isinstance(payload, OnlineBatch):
            self.online["pairs"] += payload.pairs or 0
            self.online["missing"] += missing_total(payload.missing)
            self.online_loss = payload.loss if payload.loss is not None else self.online_loss
            return None
        if isinstance(payload, OnlinePass):
            missing = ", ".join(f"{reason} {n}" for reason, n in (payload.missing or {}).items()) or "none"
            return (f"online pass {payload.pass_index} ({payload.split}): {payload.pairs} pairs for "
                    f"{payload.queries} queries, {payload.steps} steps, missing: {missing}")
        if isinstance(payload, OnlineState) and payload.state == "waiting_for_login":
            return "waiting for a crawler rank to log in (scan its QR code at /login)"
        if isinstance(payload, OnlineState) and payload.state == "logged_in":
            return "a crawler rank is logged in"
        if isinstance(payload, Phase) and payload.name:
            self.phase = payload.name
            return None
        if isinstance(payload, State) and event.type == "state":
            return f"{payload.state}" + (f" ({payload.reason})" if payload.reason else "")
        if isinstance(payload, Log) and payload.message and (payload.level == "error" or is_cause(payload.message)):
            self.cause = payload.message.strip()
        if isinstance(payload, Log) and payload.level in ("error", "warning"):
            return f"{payload.level}: {payload.message}"
        return None

    def eta(self) -> float | None:
        step = self.step
        if step is None or self.first is None or not step.total_steps or self.last_ts is None:
            return None
        done = (step.step or 0) - self.first[1]
        elapsed = self.last_ts - self.first[0]
        if done <= 0 or elapsed <= 0:
            return None
        return (step.total_steps - (step.step or 0)) * elapsed / done

    def line(self) -> str:
        parts = []
        step = self.step
        if step is not None:
            total = step.total_steps
            where = f"step {step.step}/{total}" if total else f"step {step.step}"
            if total:
                where += f" ({100 * (step.step or 0) / total:.0f}%)"
            parts.append(where)
            eta = self.eta()
            if eta is not None:
                parts.append(f"ETA {duration(eta)}")
            if step.loss is not None:
                parts.append(f"loss {number(step.loss)}")
            if step.samples_per_s is not None:
                parts.append(f"{step.samples_per_s:.0f} samples/s")
        elif self.phase:
            parts.append(self.phase)
        if self.validation is not None:
            v = self.validation
            parts.append("val " + "  ".join(f"{label} {getattr(v, key):.1f}" for key, label in
                                            (("r1", "R@1"), ("mr", "MR")) if getattr(v, key) is not None))
        if self.online["pairs"] or self.online["missing"]:
            online = f"online {self.online['pairs']:.0f} pairs, {self.online['missing']:.0f} missing"
            if self.online_loss is not None:
                online += f", loss {number(self.online_loss)}"
            parts.append(online)
        return " | ".join(parts)


def outputs(job: dict[str, Any]) -> str:
    paths = (job.get("result") or {}).get("paths")
    if isinstance(paths, dict):
        run_dir = paths.get("run_dir")
        checkpoints = paths.get("checkpoints") or []
        text = str(run_dir or "")
        if checkpoints:
            text += f" ({len(checkpoints)} checkpoint{'s' if len(checkpoints) != 1 else ''}; latest: {paths.get('latest')})"
        return text
    if isinstance(paths, list) and paths:
        return ", ".join(str(p) for p in paths)
    return ""


# torchrun's report of a failed child says that it failed, not why: never taken as the cause.
LAUNCHER_NOISE = ("torch.distributed", "ChildFailedError", "elastic", "Root Cause", "traceback :")


def is_cause(line: str) -> bool:
    """A line of the run's output that says why it failed (``cnclip train: error: ...``, an
    exception's last line)."""
    if any(noise in line for noise in LAUNCHER_NOISE):
        return False
    return ": error:" in line or re.search(r"\b[A-Z]\w*(Error|Exception): ", line) is not None


def failure_cause(job: dict[str, Any]) -> str | None:
    causes = [line.strip() for line in (job.get("error") or "").splitlines() if is_cause(line)]
    return causes[-1] if causes else None


def summary(job: dict[str, Any], cause: str | None = None) -> list[str]:
    """A few lines on how a job ended: state and duration, headline metrics, where the outputs are."""
    start = job.get("started_at") or job.get("created_at")
    end = job.get("finished_at") or time.time()
    name = (job.get("spec") or {}).get("name")
    title = f"job {job['id']} ({job.get('kind')}{', ' + name if name else ''}) {job['state']}"
    title += f" after {duration(end - start)}" if start else ""
    if job.get("reason"):
        title += f": {job['reason']}"
    lines = [title]
    result = job.get("result") or {}
    metrics = result.get("metrics") or {}
    if metrics:
        where = f" @ step {metrics['step']}" if metrics.get("step") is not None else ""
        label = "last validation" if job.get("kind") == "train" else "metrics"
        figures = recalls(metrics)
        if figures:
            lines.append(f"  {label}{where}: {figures}")
    if result.get("steps"):
        lines.append(f"  steps: {result['steps']}")
    where = outputs(job)
    if where:
        lines.append(f"  outputs: {where}")
    if job["state"] == "failed":
        cause = cause or failure_cause(job)
        if cause:
            lines.append(f"  cause: {cause}")
        elif job.get("error"):
            lines.extend("  | " + line for line in job["error"].splitlines()[-5:])
    return lines
