"""The benchmarks are not run by the test suite (they take minutes and want a quiet machine),
so that an API they use can move without anyone noticing: each must at least load, with every
name it imports, in a fresh interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
LOAD_EACH = """
import runpy, sys, traceback
failed = []
for path in sys.argv[1:]:
    try:
        runpy.run_path(path, run_name="loaded_by_the_test")  # not __main__: main() does not run
    except Exception:
        failed.append(path + "\\n" + traceback.format_exc(limit=2))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_loads():
    benches = sorted(str(p) for p in BENCH_DIR.glob("bench_*.py"))
    assert len(benches) >= 10
    done = subprocess.run([sys.executable, "-c", LOAD_EACH, *benches], capture_output=True, text=True,
                          cwd=BENCH_DIR.parents[1], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


HELP_EACH = """
import contextlib, io, runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        failed.append(path + ": --help did not exit")
    except SystemExit as done:
        if done.code not in (0, None) or "usage:" not in out.getvalue():
            failed.append(f"{path}: --help exited {done.code}: {out.getvalue()[-500:]}")
    except Exception as exc:
        failed.append(f"{path}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_parses_its_options():
    """``--help`` runs each benchmark's own argument parser: a renamed or broken option fails here."""
    benches = sorted(str(p) for p in BENCH_DIR.glob("bench_*.py") if "argparse" in p.read_text())
    assert len(benches) >= 10
    done = subprocess.run([sys.executable, "-c", HELP_EACH, *benches], capture_output=True, text=True,
                          cwd=BENCH_DIR.parents[1], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def _last_json(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=BENCH_DIR.parents[1],
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_api_benchmarks_run_at_their_smallest_size():
    followers = _last_json([str(BENCH_DIR / "bench_followers.py"), "--followers", "20", "--jobs", "2",
                            "--seconds", "1", "--rate", "10", "--event-rate", "5"])
    assert followers["followers"] == 20 and followers["followers_joined_before_load"] == 20
    assert followers["streams_cut"] == 0 and followers["streams_missing_events"] == 0
    assert followers["events_per_job"] > 0 and followers["jobs_list_requests"] == 10
    status = _last_json([str(BENCH_DIR / "bench_status.py"), "--seconds", "1", "--rate", "10", "--jobs", "5",
                         "--list-jobs", "60", "--list-seconds", "1", "--list-rate", "10"])
    assert status["status_requests"] == 10 and status["status_errors"] == 0
    assert set(status["list"]) >= {"unfiltered", "state=running", "kind=predict"}
    assert all(v["errors"] == 0 for v in status["list"].values())
