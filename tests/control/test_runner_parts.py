"""The runner's parts on their own: the events-file tail, progress folding, the torchrun
command, recovery of an orphaned job, and that neither the control service nor the runner
imports torch."""
from __future__ import annotations

import json
import subprocess
import sys

import psutil

from shared.jobs import JobRecord, JobStore
from shared.jobspec import TrainSpec
from shared.messages import JobEvent
from services.trainer.runner.events_tail import EventFileTail
from services.trainer.runner.execute import QUEUED_ELSEWHERE, build_command, requeue_or_fail
from services.trainer.runner.progress import ProgressTracker
from services.trainer.runner.recovery import recover_orphans
from services.trainer.runner.settings import RunnerSettings
from tests.control.conftest import REPO_ROOT


def test_tail_returns_complete_lines_only(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventFileTail(path)
    assert tail.read() == []  # not written yet
    event = JobEvent(type="train_step", data={"step": 1}).model_dump_json()
    path.write_text(event + "\n" + event[:10])
    assert [e.data["step"] for e in tail.read()] == [1]
    with open(path, "a") as handle:
        handle.write(event[10:] + "\nnot json at all\n")
    events = tail.read()
    assert [e.type for e in events] == ["train_step", "log"]
    assert events[1].data["message"] == "not json at all"
    assert tail.read() == []


def test_progress_keeps_latest_figures_and_eta():
    tracker = ProgressTracker()
    for step, ts in ((1, 100.0), (11, 110.0)):
        tracker.apply(JobEvent(type="train_step", ts=ts, data={"step": step, "total_steps": 101, "loss": 1.0 / step}))
    assert tracker.progress["step"] == 11 and tracker.progress["eta_s"] == 90.0
    tracker.apply(JobEvent(type="validation", data={"step": 11, "r1": 5.0, "r5": 9.0, "r10": 12.0, "mr": 8.7}))
    tracker.apply(JobEvent(type="online", data={"queries": 4, "pairs": 3, "missing": {"late": 1}, "wait_ms": 500}))
    tracker.apply(JobEvent(type="online", data={"queries": 4, "pairs": 4, "missing": {}, "wait_ms": 250.5}))
    tracker.apply(JobEvent(type="online_state", data={"state": "waiting_for_login"}))
    tracker.apply(JobEvent(type="ensemble", data={"member": 1, "weight": 0.5, "progress": "2/2"}))
    tracker.apply(JobEvent(type="result", data={"metrics": {"r1": 1.0}}))
    tracker.apply(JobEvent(type="trainer_state", data={"state": "failed", "reason": "out of memory"}))
    assert tracker.progress["validation"]["mr"] == 8.7
    assert tracker.progress["online_total"] == {"queries": 8, "pairs": 7, "missing": 1, "wait_ms": 750.5}
    assert tracker.progress["online"] == {"queries": 4, "pairs": 4, "missing": {}, "wait_ms": 250.5}
    assert tracker.progress["online_state"] == "waiting_for_login"
    assert tracker.progress["ensemble"]["1"] == {"weight": 0.5, "progress": "2/2"}
    assert tracker.result == {"metrics": {"r1": 1.0}} and tracker.error == "out of memory"


def test_torchrun_command_hands_the_trainer_resolved_options(tmp_path):
    spec = TrainSpec(train_data="d/train", nproc_per_node=2, max_steps=3, device="cuda")
    record = JobRecord(id="job-1", kind="train", spec=spec.model_dump(mode="json", exclude={"kind"}))
    settings = RunnerSettings(data_root=tmp_path, device_override="cpu")
    argv = build_command(record, settings, tmp_path / "ev.jsonl")
    split = argv.index("--")
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert argv[3:split] == ["--nnodes=1", "--nproc-per-node=2", "--standalone", "-m"]
    assert argv[split + 1:] == ["services.trainer.cli", "train", "--options-file", str(tmp_path / "ev.options.json")]
    options = json.loads((tmp_path / "ev.options.json").read_text())
    assert options["device"] == "cpu"  # the machine's override wins
    assert options["logs"] == str(tmp_path / "experiments") and options["name"] == "job-1"
    assert options["train_data"] == str(tmp_path / "d/train") and options["events"] == str(tmp_path / "ev.jsonl")
    resumed = record.model_copy(update={"resume_from": str(tmp_path / "latest.pt")})
    build_command(resumed, settings, tmp_path / "e.jsonl")
    assert json.loads((tmp_path / "e.options.json").read_text())["resume"] == str(tmp_path / "latest.pt")
    # The trainer's own parser reads the file into the same options.
    from services.trainer.cli import build_parser
    from services.trainer.commands.train import config_from

    (tmp_path / "d/train/imgs").mkdir(parents=True)
    (tmp_path / "d/train/pairs").mkdir()
    config = config_from(build_parser(only="train").parse_args(argv[split + 2:]))
    assert (config.max_steps, config.device, config.name, config.no_progress) == (3, "cpu", "job-1", True)


def test_control_and_runner_do_not_import_torch():
    code = ("import sys; import services.control.app, services.control.__main__, "
            "services.trainer.runner.celery_app, services.trainer.runner.__main__; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_two_runners_recovering_one_orphan_queue_its_nodes_once(redis_client, tmp_path):
    """Two runners find the same dead runner's job at once: one re-queues it and sends its
    tasks; the other learns it is queued elsewhere and sends none (a second set of tasks would
    start each node of a multi-node job twice)."""
    store = JobStore(redis_client)
    settings = RunnerSettings(data_root=tmp_path, host="this-machine")
    record, _ = store.create(TrainSpec(train_data="d", nnodes=2))
    dead = max(psutil.pids()) + 10_000
    store.transition(record.id, "running", runner_host="this-machine", runner_pid=dead, attempts=1)
    stale = store.get(record.id)
    sent: list[str] = []
    assert recover_orphans(store, settings, sent.append) == [(record.id, "queued")]
    # The second runner read the job as running just before the first re-queued it.
    assert requeue_or_fail(store, settings, stale, "runner died mid-job") == QUEUED_ELSEWHERE
    assert sent == [record.id] and store.get(record.id).state == "queued"
