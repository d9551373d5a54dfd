"""``cnclip jobs`` against the real local stack: the control service (uvicorn), a Celery job
runner that runs tiny training jobs on the CPU, Redis."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.client.cli import command, environment, cnclip
from tests.control.test_runner import DATASET, TRAIN, sse_events

pytestmark = pytest.mark.slow


def _write_spec(tmp_path, name: str, **options) -> str:
    path = tmp_path / f"{name}.yaml"
    # Written as YAML, as a user would.
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**TRAIN, **options}.items()))
    return str(path)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_submit_and_follow_to_the_end_then_logs_replay_the_stream(stack, tmp_path):
    control, runner = stack
    spec = _write_spec(tmp_path, "run", max_steps=3)
    followed = cnclip("submit", "train", spec, "--set", "max_steps=5", "--set", "name=cli-run", "--follow",
                      url=control.base_url)
    assert followed.code == 0, (followed, runner.log_tail())
    out = followed.out
    assert "step 5/5" in out  # the progress line at each tenth of a run, without a terminal
    assert "validation @ step 5: R@1" in out
    summary = out[out.index("job "):] if "\njob " not in out else out[out.rindex("\njob ") + 1:]
    assert " (train, cli-run) succeeded after " in summary
    assert "last validation @ step 5: R@1 " in summary and "MR " in summary
    assert "/experiments/cli-run (2 checkpoints; latest: " in summary and "epoch_latest.pt" in summary
    assert "44.27083333" not in out and len(summary.splitlines()) <= 6
    job_id = out.split()[1]

    replay = cnclip("logs", job_id, "--json", url=control.base_url)
    assert replay.code == 0
    logged = _json_lines(replay.out)
    streamed = sse_events(control, job_id)
    assert [{k: v for k, v in e.items() if k != "id"} for e in logged] == streamed
    ids = [e["id"] for e in logged]
    assert len(set(ids)) == len(ids) == len(streamed) and streamed[-1]["data"]["state"] == "succeeded"

    human = cnclip("logs", job_id, url=control.base_url)
    assert human.code == 0 and len(human.out.splitlines()) == len(streamed)
    assert cnclip("wait", job_id, url=control.base_url).code == 0
    shown = cnclip("show", job_id, "--json", url=control.base_url)
    assert json.loads(shown.out)["result"]["metrics"]["step"] == 5
    listed = json.loads(cnclip("list", "--json", "--state", "succeeded", "--kind", "train",
                               url=control.base_url).out)
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert json.loads(cnclip("list", "--json", "--kind", "predict", url=control.base_url).out)["jobs"] == []
    deleted = cnclip("delete", job_id, url=control.base_url)
    assert deleted.code == 0 and cnclip("show", job_id, url=control.base_url).code == 2


def test_cancel_and_the_exit_codes_of_wait(stack, tmp_path):
    control, runner = stack
    submitted = cnclip("submit", "train", _write_spec(tmp_path, "long", max_steps=5000), "--json",
                       url=control.base_url)
    assert submitted.code == 0, submitted
    job_id = json.loads(submitted.out)["id"]
    assert cnclip("wait", job_id, "--timeout", "1", "--interval", "0.2", url=control.base_url).code == 4
    deadline = time.monotonic() + 240
    while json.loads(cnclip("show", job_id, "--json", url=control.base_url).out)["state"] != "running":
        assert time.monotonic() < deadline, runner.log_tail()
        time.sleep(0.5)
    assert cnclip("delete", job_id, url=control.base_url).code == 2  # not ended: cancel it first
    cancelled = cnclip("cancel", job_id, url=control.base_url)
    assert cancelled.code == 0 and job_id in cancelled.out
    waited = cnclip("wait", job_id, url=control.base_url)
    assert waited.code == 3 and waited.out.strip() == f"job {job_id} cancelled"
    again = cnclip("cancel", job_id, url=control.base_url)
    assert again.code == 2 and "already cancelled" in again.one_line_error()

    # A job that fails: its training data is a folder without LMDB in it.
    (control.data_root / "datasets" / "empty").mkdir(parents=True, exist_ok=True)
    failing = cnclip("submit", "train", _write_spec(tmp_path, "bad", max_steps=2, train_data="datasets/empty"),
                     "--follow", url=control.base_url)
    assert failing.code == 1, failing
    assert " failed after " in failing.out
    assert "  cause: " in failing.out and "has no imgs or pairs LMDB" in failing.out
    assert "ChildFailedError" not in failing.out.split("cause:")[1]
    failed_id = failing.out.split()[1]
    assert cnclip("wait", failed_id, url=control.base_url).code == 1


def test_following_survives_a_restart_of_the_control_service(stack, tmp_path):
    control, runner = stack
    submitted = cnclip("submit", "train", _write_spec(tmp_path, "restart", max_steps=40), "--json",
                       url=control.base_url)
    job_id = json.loads(submitted.out)["id"]
    follower = subprocess.Popen(command("logs", job_id, "--follow", "--json", "--retry-s", "120"),
                                env=environment(control.base_url), cwd="/", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any('"train_step"' in line for line in lines):
        assert time.monotonic() < deadline and follower.poll() is None, (lines, runner.log_tail())
        time.sleep(0.2)
    control.stop()  # the service goes away mid-job
    time.sleep(3)
    control.start()
    assert follower.wait(timeout=600) == 0, follower.stderr.read()
    assert "reconnecting" in follower.stderr.read()  # it did lose the service mid-job
    reader.join(timeout=10)
    followed = [json.loads(line) for line in lines]
    final = followed.pop()  # the job as it ended
    assert final["state"] == "succeeded"
    ids = [e["id"] for e in followed]
    assert len(ids) == len(set(ids)), "an event was shown twice"
    streamed = sse_events(control, job_id)
    mine = [{k: v for k, v in e.items() if k != "id"} for e in followed]
    assert mine == streamed, ("an event was lost", [e for e in streamed if e not in mine],
                              [e for e in mine if e not in streamed])
    assert [e["data"]["step"] for e in followed if e["type"] == "train_step"] == list(range(1, 41))
