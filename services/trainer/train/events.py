"""Structured progress events of a run, sent to pluggable sinks.

An event is a type and keyword data (``emit("train_step", step=10, loss=0.5)``). Sinks:
``JsonLinesSink`` writes one ``shared.messages.JobEvent`` per line (flushed per line, so a
reader tailing the file sees each event at once; the job service forwards them to Redis),
``TqdmSink`` shows a progress bar when stderr is a terminal, ``MultiSink`` fans out,
``NullSink`` drops everything (ranks other than 0).

Event types and their fields are the payload models of ``shared.messages`` (``EVENT_PAYLOADS``);
``JsonLinesSink`` checks each event against its model, so a misspelt field or an unknown type
fails where it is emitted instead of vanishing from every chart.
"""
from __future__ import annotations

import math
import sys
import threading
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

from shared.messages import JobEvent, TrainStep, Validation


@runtime_checkable
class EventSink(Protocol):
    def emit(self, type: str, **data: Any) -> None: ...

    def close(self) -> None: ...


def plain(value: Any) -> Any:
    """A JSON-ready copy of ``value``: tensors and numpy scalars become numbers or lists,
    non-finite floats become None (JSON has no NaN), paths become strings."""
    if hasattr(value, "tolist") and callable(value.tolist):  # torch.Tensor, numpy
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class NullSink:
    def emit(self, type: str, **data: Any) -> None:
        pass

    def close(self) -> None:
        pass


class JsonLinesSink:
    """Appends one JSON object per event: ``{"type", "ts", "job_id", "data"}``."""

    def __init__(self, path: str | Path, job_id: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.job_id = job_id
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, type: str, **data: Any) -> None:
        event = JobEvent.checked(type, plain(data), job_id=self.job_id)
        line = event.model_dump_json() + "\n"
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"event sink {self.path} is closed")
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class TqdmSink:
    """A progress bar over training steps, with loss, lr and throughput as its postfix;
    validation results are printed above the bar. Shows nothing unless the
    stream is a terminal (or ``force``), so logs of batch jobs stay clean."""

    def __init__(self, stream: TextIO | None = None, force: bool = False):
        self.stream = stream or sys.stderr
        self.enabled = force or bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None

    def _ensure_bar(self, total: int | None, initial: int):
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, initial=initial, file=self.stream, unit="step",
                             dynamic_ncols=True, desc="train")
        return self._bar

    def emit(self, type: str, **data: Any) -> None:
        if not self.enabled:
            return
        payload = JobEvent(type=type, data=plain(data)).payload()
        if isinstance(payload, TrainStep):
            step = payload.step or 0
            bar = self._ensure_bar(payload.total_steps, step)
            bar.update(max(0, step - bar.n))
            figures = {**payload.figures(), **payload.set_fields("logit_scale")}
            bar.set_postfix({"epoch": payload.epoch, **{k: f"{v:.4g}" for k, v in figures.items()}}, refresh=False)
        elif isinstance(payload, Validation):
            headline = payload.headline()
            fields = ", ".join(f"{k}={v:.4g}" for k, v in headline.items() if k not in ("step", "epoch"))
            self._write(f"validation @ step {payload.step}: {fields}")

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class MultiSink:
    def __init__(self, *sinks: EventSink):
        self.sinks = [s for s in sinks if s is not None]

    def emit(self, type: str, **data: Any) -> None:
        for sink in self.sinks:
            sink.emit(type, **data)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
