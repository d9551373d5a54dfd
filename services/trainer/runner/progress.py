"""Folds a job's events into the small summary kept on its record (latest figures, ETA), so
the status page reads one hash per job instead of replaying streams. Events are read through
their payload models (``shared.messages``); an event that fits no model is ignored."""
from __future__ import annotations

import time
from typing import Any

from shared.messages import (
    Checkpoint,
    Ensemble,
    JobEvent,
    Log,
    OnlineBatch,
    OnlinePass,
    OnlineState,
    Phase,
    Result,
    TrainerState,
    TrainStep,
    Validation,
)


class ProgressTracker:
    def __init__(self, initial: dict[str, Any] | None = None):
        self.progress: dict[str, Any] = dict(initial or {})
        self.result: dict[str, Any] = {}
        self.error: str = ""
        self._first_step: tuple[float, int] | None = None

    def apply(self, event: JobEvent) -> None:
        payload = event.payload()
        if isinstance(payload, TrainStep):
            self.progress.update(payload.position())
            self.progress.update(payload.figures())
            self._update_eta(event.ts, payload)
        elif isinstance(payload, Validation):
            self.progress["validation"] = payload.headline()
        elif isinstance(payload, OnlineBatch):
            self.progress["online"] = payload.model_dump(exclude_unset=True)
            totals = self.progress.setdefault("online_total", {})
            for key, value in payload.counts().items():
                totals[key] = round(totals.get(key, 0) + value, 3)
        elif isinstance(payload, OnlinePass):
            self.progress["online_pass"] = payload.model_dump(exclude_unset=True)
        elif isinstance(payload, OnlineState):
            # waiting_for_login while no crawler rank is logged in; logged_in once one is.
            self.progress["online_state"] = payload.state or ""
        elif isinstance(payload, Phase):
            self.progress["phase"] = payload.name or ""
            self.progress.update(payload.set_fields("step", "total_steps", "epoch"))
        elif isinstance(payload, Ensemble):
            members = self.progress.setdefault("ensemble", {})
            members[payload.member_key] = payload.model_dump(exclude_unset=True, exclude={"member"})
        elif isinstance(payload, Checkpoint):
            self.progress["checkpoint"] = payload.path or ""
        elif isinstance(payload, Result):
            self.result.update(payload.model_dump(exclude_unset=True))
        elif isinstance(payload, Log) and payload.level in ("error", "critical"):
            self.error = str(payload.message or "")[:2000]
        elif isinstance(payload, TrainerState) and payload.reason:
            self.error = payload.reason[:2000]

    def _update_eta(self, ts: float, step_event: TrainStep) -> None:
        step, total = step_event.step, step_event.total_steps
        if step is None or total is None:
            return
        if self._first_step is None or step < self._first_step[1]:
            self._first_step = (ts, step)
            return
        t0, s0 = self._first_step
        if step > s0 and ts > t0:
            rate = (step - s0) / (ts - t0)
            self.progress["eta_s"] = round(max(total - step, 0) / rate, 1)
            self.progress["eta_at"] = round(time.time() + self.progress["eta_s"], 1)
