"""Property-based requests from the OpenAPI schema against the live service: whatever comes
in, the answer is never a server error (schemathesis' CLI, bounded examples)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_no_server_errors_from_generated_requests(control, data_root, tmp_path):
    (data_root / "datasets/tiny/lmdb/train").mkdir(parents=True)
    done = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{control.base_url}/openapi.json",
         "-H", f"Authorization: Bearer {control.token}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "7",
         "--request-timeout", "20", "--workers", "1", "--no-color",
         # The event stream of a live job lasts as long as the job; it is tested on its own.
         "--exclude-path-regex", r"/events$",
         "--suppress-health-check", "all", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "passed" in output.lower()
