"""The benchmarks are not run by the test suite (they take minutes and want a quiet machine),
so that an API they use can move without anyone noticing: each must at least load, with every
name it imports, in a fresh interpreter."""
from __future__ import annotations

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
