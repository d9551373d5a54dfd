"""``cnclip jobs`` where no job runs: what it imports, where it finds the service, bad input."""
from __future__ import annotations

import subprocess
import sys

from tests.client.cli import REPO_ROOT, cnclip, environment
from tests.helpers import free_port


def test_jobs_is_dispatched_without_importing_torch():
    port = free_port()
    probe = ("import sys\n"
             "from services.trainer.cli import main\n"
              f"code = main(['jobs', 'list', '--url', 'http://127.0.0.1:{port}'])\n"
              "print(code, 'torch' in sys.modules, 'httpx' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=environment(),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["4", "False", "True"], done.stdout + done.stderr
    # The same check sees torch when something does import it: the probe can fail.
    seen = subprocess.run([sys.executable, "-c", "import sys, torch; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert seen.stdout.strip() == "True"


def test_a_service_that_is_not_there_exits_4_in_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["list"], ["show", "abc"], ["wait", "abc"], ["logs", "abc", "--follow", "--retry-s", "1"]):
        outcome = cnclip(*args, url=url)
        assert outcome.code == 4, (args, outcome)
        assert "cannot reach the control service" in outcome.one_line_error() or \
            "lost the control service" in outcome.one_line_error()


def test_a_spec_that_is_not_yaml_is_refused_before_anything_is_sent(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the file alone is refused
    bad = tmp_path / "spec.yaml"
    bad.write_text("train_data: [datasets/x\n")
    outcome = cnclip("submit", "train", str(bad), url=url)
    assert outcome.code == 2
    assert "is not YAML or JSON (line 2" in outcome.one_line_error()
    binary = tmp_path / "spec.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    assert cnclip("submit", "train", str(binary), url=url).code == 2
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    outcome = cnclip("submit", "train", str(listed), url=url)
    assert outcome.code == 2 and "must be a mapping" in outcome.one_line_error()
    outcome = cnclip("submit", "train", str(tmp_path / "absent.yaml"), url=url)
    assert outcome.code == 2 and "no spec file" in outcome.one_line_error()
    outcome = cnclip("submit", "train", "-", "--set", "max_steps", url=url, stdin="{}")
    assert outcome.code == 2 and "--set 'max_steps': expected key=value" in outcome.one_line_error()
