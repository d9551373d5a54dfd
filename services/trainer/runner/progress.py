"""Folds a job's events into the small summary kept on its record (latest figures, ETA), so
the status page reads one hash per job instead of replaying streams."""
from __future__ import annotations

import time
from typing import Any

from shared.messages import JobEvent

_ONLINE_COUNTERS = ("queries", "pairs", "dropped_leaked", "wait_ms")


class ProgressTracker:
    def __init__(self, initial: dict[str, Any] | None = None):
        self.progress: dict[str, Any] = dict(initial or {})
        self.result: dict[str, Any] = {}
        self.error: str = ""
        self._first_step: tuple[float, int] | None = None

    def apply(self, event: JobEvent) -> None:
        data = event.data
        kind = event.type
        if kind == "train_step":
            for key in ("step", "total_steps", "epoch", "loss", "lr", "samples_per_s"):
                if key in data:
                    self.progress[key] = data[key]
            self._update_eta(event.ts, data)
        elif kind == "validation":
            self.progress["validation"] = {k: data[k] for k in
                                           ("step", "epoch", "loss", "r1", "r5", "r10", "mr")
                                           if k in data}
        elif kind == "online":
            self.progress["online"] = {k: data[k] for k in (*_ONLINE_COUNTERS, "loss", "missing", "online_step")
                                       if k in data}
            totals = self.progress.setdefault("online_total", {k: 0 for k in _ONLINE_COUNTERS})
            for key in _ONLINE_COUNTERS:
                value = data.get(key)
                if isinstance(value, (int, float)):
                    totals[key] = round(totals.get(key, 0) + value, 3)
        elif kind == "online_state":
            # waiting_for_login while no crawler rank is logged in; logged_in once one is.
            self.progress["online_state"] = data.get("state", "")
        elif kind == "online_pass":
            self.progress["online_pass"] = {k: data[k] for k in
                                            ("split", "epoch", "pass_index", "queries", "pairs", "steps",
                                             "missing", "wall_s") if k in data}
        elif kind == "phase":
            self.progress["phase"] = data.get("name", "")
            for key in ("step", "total_steps", "epoch"):
                if key in data:
                    self.progress[key] = data[key]
        elif kind == "ensemble":
            members = self.progress.setdefault("ensemble", {})
            member = str(data.get("member", "fused"))
            members[member] = {k: v for k, v in data.items() if k != "member"}
        elif kind == "checkpoint":
            self.progress["checkpoint"] = data.get("path", "")
        elif kind == "result":
            self.result.update(data)
        elif kind == "log" and data.get("level") in ("error", "critical"):
            self.error = str(data.get("message", ""))[:2000]
        elif kind == "trainer_state" and data.get("reason"):
            self.error = str(data["reason"])[:2000]

    def _update_eta(self, ts: float, data: dict[str, Any]) -> None:
        step, total = data.get("step"), data.get("total_steps")
        if not isinstance(step, (int, float)) or not isinstance(total, (int, float)):
            return
        if self._first_step is None or step < self._first_step[1]:
            self._first_step = (ts, int(step))
            return
        t0, s0 = self._first_step
        if step > s0 and ts > t0:
            rate = (step - s0) / (ts - t0)
            self.progress["eta_s"] = round(max(total - step, 0) / rate, 1)
            self.progress["eta_at"] = round(time.time() + self.progress["eta_s"], 1)
