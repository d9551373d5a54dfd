"""Runs one job to its end: checks its inputs, launches torchrun, forwards events, heartbeats,
honours cancel and shutdown, and leaves the job in a final state (or queued for a resume)."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import zlib
from pathlib import Path

from shared import redis_keys
from shared.jobs import InvalidTransition, JobNotFound, JobRecord, JobStore, PredictSpec, TrainSpec
from shared.jobspec import PathOutsideDataRoot, resolve_under
from shared.messages import JobEvent
from shared.muge import has_ground_truth
from services.trainer.runner import active
from services.trainer.runner.events_tail import EventFileTail
from services.trainer.runner.outage import REDIS_DOWN, RedisOutage
from services.trainer.runner.process import JobProcess
from services.trainer.runner.progress import ProgressTracker
from services.trainer.runner.settings import RunnerSettings

PROJECT_ROOT = Path(__file__).resolve().parents[3]
RECORD_UPDATE_S = 0.5
# What requeue_or_fail answers for a job another runner has just re-queued.
QUEUED_ELSEWHERE = "queued by another runner"
# Events kept while Redis is away; beyond this the oldest are dropped (and that is reported).
MAX_PENDING_EVENTS = 50_000


def latest_checkpoint(spec: TrainSpec, data_root: Path, name: str) -> Path | None:
    path = spec.output_dir(data_root, name) / "checkpoints" / "epoch_latest.pt"
    return path if path.is_file() else None


def _master_port(settings: RunnerSettings, job_id: str) -> int:
    return settings.master_port_base + zlib.crc32(job_id.encode()) % 1000


def build_command(record: JobRecord, settings: RunnerSettings, events: Path, *,
                  node_rank: int = 0, master_addr: str = "127.0.0.1") -> list[str]:
    """torchrun running ``cnclip train|predict --options-file F``: the spec's options, resolved
    under the data root, go to the trainer as JSON (F beside ``events``), so the runner never
    re-renders options as command-line text."""
    spec = record.spec
    if settings.device_override:
        spec = spec.model_copy(update={"device": settings.device_override})
    resume = Path(record.resume_from) if record.resume_from else None
    options = spec.resolved_options(settings.data_root, job_id=record.id, events=events, resume_override=resume)
    options_file = events.with_name(events.stem + ".options.json")
    options_file.parent.mkdir(parents=True, exist_ok=True)
    options_file.write_text(json.dumps(options, indent=1, sort_keys=True), encoding="utf-8")
    torchrun = spec.torchrun_args(node_rank=node_rank, master_addr=master_addr,
                                  master_port=_master_port(settings, record.id))
    # "--" ends torchrun's own options: its parser would otherwise read the trainer's
    # options too (and refuse "--logs" as an ambiguous prefix of its "--logs-specs").
    return [settings.python, "-m", "torch.distributed.run", *torchrun,
            "-m", "--", "services.trainer.cli", spec.kind, "--options-file", str(options_file)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class JobExecution:
    def __init__(self, store: JobStore, settings: RunnerSettings, job_id: str,
                 stopping: threading.Event, node_rank: int = 0):
        self.store = store
        self.settings = settings
        self.job_id = job_id
        self.stopping = stopping
        self.node_rank = node_rank
        self.tracker = ProgressTracker()
        self.run_dir = settings.runs_dir / job_id
        self.outage = RedisOutage(settings.redis_outage_s)
        self._pending: list[JobEvent] = []
        self._dropped = 0

    # ---- entry --------------------------------------------------------------------------
    def run(self) -> str:
        active.started(self.job_id)
        try:
            return self._run()
        finally:
            active.ended(self.job_id)

    def _run(self) -> str:
        try:
            record = self.store.get(self.job_id)
        except JobNotFound:
            return "unknown"
        if self.node_rank > 0:
            # Node 0 may have started the job already: a node that joins it never runs it itself.
            return self._run_follower(record)
        if record.state != "queued":
            return record.state  # cancelled before it started, or a duplicate delivery
        try:
            record = self.store.transition(
                self.job_id, "running", runner_host=self.settings.host, runner_pid=os.getpid(),
                heartbeat_at=time.time(), attempts=record.attempts + 1,
                master_addr=self.settings.advertise_addr, cancel_requested=False)
        except InvalidTransition as exc:
            return exc.current
        problems = self._check_inputs(record)
        if problems:
            return self._finish("failed", "missing inputs: " + "; ".join(problems))
        self.tracker = ProgressTracker(record.progress)
        return self._launch_and_follow(record)

    def _check_inputs(self, record: JobRecord) -> list[str]:
        spec = record.spec
        problems = spec.missing_inputs(self.settings.data_root)
        if isinstance(spec, PredictSpec):
            try:
                spec.output_path(self.settings.data_root, record.id)
            except PathOutsideDataRoot as exc:
                problems.append(f"output: {exc}")
        return problems

    # ---- the run ------------------------------------------------------------------------
    def _launch_and_follow(self, record: JobRecord) -> str:
        attempt = record.attempts
        events_path = self.run_dir / f"events-{attempt}.jsonl"
        # Whatever stops the launch (a bad option, E2BIG from a huge command line, a missing
        # interpreter, a full disk) ends the job failed with the reason, never left running.
        try:
            events_path.parent.mkdir(parents=True, exist_ok=True)
            events_path.unlink(missing_ok=True)
            argv = build_command(record, self.settings, events_path,
                                 master_addr=self.settings.advertise_addr)
        except Exception as exc:
            return self._launch_failed(exc)
        self._log("info", "launch: " + " ".join(argv)[:4000])
        try:
            proc = JobProcess(argv, job_id=self.job_id, cwd=PROJECT_ROOT, env=_child_env(),
                              log_path=self.run_dir / "output.log")
        except Exception as exc:
            return self._launch_failed(exc)
        tail = EventFileTail(events_path)
        last_update = 0.0
        try:
            self.outage.call(self.store.update, self.job_id, runner_pgid=proc.pgid)
            while True:
                exited = proc.poll()
                self._collect(tail, proc)
                # Redis may be away (a restart): the child keeps running, what it said is kept,
                # and the next round tries again after a pause.
                try:
                    self._flush()
                    now = time.monotonic()
                    if now - last_update >= RECORD_UPDATE_S or exited is not None:
                        if not self.store.update(self.job_id, heartbeat_at=time.time(),
                                                 progress=self.tracker.progress):
                            # Moved on without us (failed by recovery elsewhere): stop the run.
                            proc.stop(self.settings.stop_grace_s)
                            return self.outage.call(self.store.get, self.job_id).state
                        last_update = now
                    cancel = exited is None and self.store.cancel_requested(self.job_id)
                except REDIS_DOWN as exc:
                    time.sleep(self.outage.failed(exc))
                    continue
                self.outage.recovered()
                if exited is None and not cancel and not self.stopping.is_set():
                    time.sleep(self.settings.poll_s)
                    continue
                if cancel:
                    self._log("info", "cancel requested: stopping the job's processes")
                self._end_run(tail, proc, stop=exited is None)
                break
        except BaseException:
            proc.stop(self.settings.stop_grace_s)
            raise
        if exited is not None:
            state, reason = self._outcome(exited, proc, record)
        elif cancel:
            state, reason = "cancelled", "cancelled by request"
        else:
            return self._requeue_or_fail(record, "the runner was shut down mid-job")
        if state == "succeeded" and isinstance(record.spec, PredictSpec):
            state, reason = self._evaluate(record)
        return self._finish(state, reason, log_tail=list(proc.tail) if state == "failed" else None)

    def _launch_failed(self, exc: Exception) -> str:
        return self._finish("failed", f"could not launch the job: {type(exc).__name__}: {exc}"[:2000])

    def _end_run(self, tail: EventFileTail, proc: JobProcess, *, stop: bool) -> None:
        """The run is over (``stop``: it is stopped here): its processes are gone, and what it
        wrote and printed last is in the job's stream (waiting out a Redis outage)."""
        if stop:
            proc.stop(self.settings.stop_grace_s)
        else:
            proc.wait_output()
        self._collect(tail, proc)
        self.outage.call(self._flush)

    def _collect(self, tail: EventFileTail, proc: JobProcess) -> None:
        """Takes what the trainer wrote and printed since the last call (no Redis needed)."""
        events = tail.read()
        for line in proc.new_lines():
            events.append(JobEvent(type="log", data={"level": "output", "message": line[:4000]}))
        for event in events:
            update: dict = {"job_id": self.job_id}
            if event.type == "state":
                # The job's own state events come from the state machine only; what the
                # trainer says about its state is kept under another name.
                update["type"] = "trainer_state"
            event = event.model_copy(update=update)
            self.tracker.apply(event)
            self._pending.append(event)
        if len(self._pending) > MAX_PENDING_EVENTS:
            excess = len(self._pending) - MAX_PENDING_EVENTS
            self._dropped += excess
            del self._pending[:excess]

    def _flush(self) -> None:
        """Writes the collected events to the job's stream (raises while Redis is away)."""
        if self._dropped:
            self._pending.insert(0, JobEvent(type="log", job_id=self.job_id, data={
                "level": "warning", "message": f"{self._dropped} events dropped while Redis was away"}))
            self._dropped = 0
        if self._pending:
            self.store.append_events(self.job_id, self._pending)
            self._pending = []

    def _outcome(self, code: int, proc: JobProcess, record: JobRecord) -> tuple[str, str]:
        if code == 0:
            return "succeeded", ""
        reason = self.tracker.error or _last_error_line(list(proc.tail)) or f"exit status {code}"
        return "failed", f"trainer exited with status {code}: {reason}"

    def _evaluate(self, record: JobRecord) -> tuple[str, str]:
        """Scores the predictions when the queries carry their ground-truth images and the
        trainer did not report metrics itself."""
        spec = record.spec
        assert isinstance(spec, PredictSpec)
        output = spec.output_path(self.settings.data_root, record.id)
        if not output.is_file():
            return "failed", f"the trainer reported success but wrote no predictions at {output}"
        self.tracker.result.setdefault("predictions", str(output))
        if not spec.evaluate or self.tracker.result.get("metrics"):
            self._store_result()
            return "succeeded", ""
        texts = resolve_under(self.settings.data_root, spec.text_data)
        if not has_ground_truth(texts):
            self._store_result()
            return "succeeded", ""
        metrics_path = output.with_name(output.stem + ".metrics.json")
        done = subprocess.run(
            [self.settings.python, "-m", "services.trainer.cli", "evaluate", str(texts),
             str(output), "--output", str(metrics_path)],
            cwd=PROJECT_ROOT, env=_child_env(), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            return "failed", "evaluation failed: " + " | ".join(tail)
        try:
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() \
                else json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return "failed", "evaluation printed no metrics"
        self.tracker.result.update({"metrics": metrics, "metrics_path": str(metrics_path)})
        self.outage.call(self.store.append_event, self.job_id,
                         JobEvent(type="result", data=self.tracker.result))
        self._store_result()
        return "succeeded", ""

    def _store_result(self) -> None:
        self.outage.call(self.store.update, self.job_id, result=self.tracker.result)

    def _finish(self, state: str, reason: str, log_tail: list[str] | None = None) -> str:
        fields: dict = {"progress": self.tracker.progress, "result": self.tracker.result}
        if log_tail is not None:
            fields["log_tail"] = log_tail
        try:
            self.outage.call(self.store.transition, self.job_id, state, reason=reason,
                             allowed_from=["running"], **fields)
        except InvalidTransition as exc:
            return exc.current
        self.outage.call(self.store.client.delete, _cancel_key(self.job_id))
        return state

    def _requeue_or_fail(self, record: JobRecord, why: str) -> str:
        return requeue_or_fail(self.store, self.settings, self.store.get(self.job_id), why)

    def _log(self, level: str, message: str) -> None:
        self.outage.call(self.store.append_event, self.job_id,
                         JobEvent(type="log", data={"level": level, "message": message}))

    # ---- other nodes of a multi-node job -------------------------------------------------
    def _run_follower(self, record: JobRecord) -> str:
        """Nodes other than 0 wait until node 0 runs the job, join its rendezvous and leave
        the record to node 0."""
        deadline = time.monotonic() + 600
        while record.state == "queued" and time.monotonic() < deadline:
            time.sleep(1)
            record = self.store.get(self.job_id)
        if record.state != "running":
            return record.state
        events = self.run_dir / f"events-{record.attempts}-node{self.node_rank}.jsonl"
        try:
            argv = build_command(record, self.settings, events, node_rank=self.node_rank,
                                 master_addr=record.master_addr)
            proc = JobProcess(argv, job_id=self.job_id, cwd=PROJECT_ROOT, env=_child_env(),
                              log_path=self.run_dir / f"output-node{self.node_rank}.log")
        except Exception as exc:
            # Node 0 owns the record: it stops the job when this node never joins.
            self._log("error", f"node {self.node_rank} could not launch: {type(exc).__name__}: {exc}"[:2000])
            return self.outage.call(self.store.get, self.job_id).state
        # The job's stream tells when each node ran and how it ended (only node 0's trainer
        # writes events; the others' output stays in output-node<R>.log).
        self._log("info", f"node {self.node_rank} launch: " + " ".join(argv)[:4000])
        while proc.poll() is None:
            try:
                cancel = self.store.cancel_requested(self.job_id)
            except REDIS_DOWN as exc:
                time.sleep(self.outage.failed(exc))
                continue
            if cancel or self.stopping.is_set():
                proc.stop(self.settings.stop_grace_s)
                break
            time.sleep(self.settings.poll_s)
        proc.wait_output()
        code = proc.poll()
        ended = f"node {self.node_rank} ended with exit status {code}"
        if code:
            ended += ": " + (_last_error_line(list(proc.tail)) or "no error line in its output")
        self._log("info" if code == 0 else "warning", ended[:2000])
        return self.outage.call(self.store.get, self.job_id).state


def requeue_or_fail(store: JobStore, settings: RunnerSettings, record: JobRecord, why: str) -> str:
    """A running job lost its runner: run it again (training from its latest checkpoint) when
    the spec allows and attempts remain, otherwise fail it with the reason. Returns the new
    state; the caller sends the job's tasks again when it is ``queued``, which it is only when
    this call queued it (a job another runner re-queued first is ``QUEUED_ELSEWHERE``: its
    tasks are sent already, and a second set would start a node twice)."""
    spec = record.spec
    if spec.auto_resume and record.attempts < settings.max_attempts:
        resume_from = ""
        detail = "from the start"
        if isinstance(spec, TrainSpec):
            checkpoint = latest_checkpoint(spec, settings.data_root, record.id)
            if checkpoint is not None:
                resume_from, detail = str(checkpoint), f"from {checkpoint.name}"
        try:
            store.transition(record.id, "queued", reason=f"{why}; resuming {detail}",
                             allowed_from=["running"], resume_from=resume_from,
                             runner_pid=0, runner_pgid=0, heartbeat_at=None)
            return "queued"
        except InvalidTransition as exc:
            return QUEUED_ELSEWHERE if exc.current == "queued" else exc.current
    try:
        store.transition(record.id, "failed", reason=why, allowed_from=["running"])
        return "failed"
    except InvalidTransition as exc:
        return exc.current


def _cancel_key(job_id: str) -> str:
    return redis_keys.job_cancel(job_id)


def _last_error_line(lines: list[str]) -> str:
    for line in reversed(lines):
        text = line.strip()
        if text and ("Error" in text or "error:" in text.lower() or "Exception" in text):
            return text[:1000]
    return ""
