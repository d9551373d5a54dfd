"""``cnclip jobs`` against a real control service (no runner): how it finds the service and
the token, and how the service's refusals reach the user."""
from __future__ import annotations

import json

import pytest

from tests.client.cli import TOKEN, cnclip
from tests.helpers import free_port


def test_a_wrong_token_is_bad_input_and_never_printed(control):
    outcome = cnclip("list", url=control.base_url, token="not-the-token")
    assert outcome.code == 2
    line = outcome.one_line_error()
    assert "refused the token (401)" in line and "not-the-token" not in line


def test_url_and_token_come_from_flags_then_environment_then_the_stacks_env_file(control, tmp_path):
    assert cnclip("list", "--url", control.base_url, "--token", TOKEN, token=None).code == 0
    assert cnclip("list", url=control.base_url).code == 0
    state = tmp_path / "data.stack"
    state.mkdir()
    (state / "stack.env").write_text(f"CNCLIP_CONTROL_HOST=127.0.0.1\nCNCLIP_CONTROL_PORT={control.port}\n"
                                     f"CNCLIP_CONTROL_TOKEN={TOKEN}\n")
    found = cnclip("list", "--json", token=None, CNCLIP_DATA_ROOT=str(tmp_path / "data"))
    assert found.code == 0, found
    assert json.loads(found.out)["jobs"] == []
    # A flag wins over the file: a wrong --token is used, and refused.
    assert cnclip("list", "--token", "nope", token=None, CNCLIP_DATA_ROOT=str(tmp_path / "data")).code == 2
    # The compose .env of the current folder is the last place looked at.
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / ".env").write_text(f"CNCLIP_CONTROL_PORT={control.port}\nCNCLIP_CONTROL_TOKEN={TOKEN}\n")
    assert cnclip("list", token=None, cwd=tmp_path / "compose").code == 0
    assert cnclip("list", token=None, cwd=tmp_path).code == 4  # no file at all: the default port


def test_the_services_refusals_are_one_line_per_field(control, tmp_path):
    spec = tmp_path / "train.yaml"
    spec.write_text("train_data: datasets/x/lmdb/train\nmax_steps: 3\ncolour: red\nbatch_size: -1\n")
    outcome = cnclip("submit", "train", str(spec), url=control.base_url)
    assert outcome.code == 2
    line = outcome.one_line_error()
    assert "colour: Extra inputs are not permitted" in line and "batch_size:" in line

    missing = cnclip("submit", "train", str(spec), "--set", "max_stepz=4", url=control.base_url)
    assert missing.code == 2
    assert "--set max_stepz: a train spec has no option 'max_stepz' (did you mean max_steps?)" \
        in missing.one_line_error()

    unknown = cnclip("submit", "tarin", str(spec), url=control.base_url)
    assert unknown.code == 2 and "unknown job kind 'tarin'" in unknown.one_line_error()
    assert "train" in unknown.err and "predict" in unknown.err

    inputs = cnclip("submit", "train", "-", "--set", "max_steps=2", url=control.base_url,
                    stdin="train_data: datasets/absent/lmdb/train\n")
    assert inputs.code == 2
    assert "train_data: datasets/absent/lmdb/train does not exist" in inputs.one_line_error()

    for args in (["show", "no-such-job"], ["cancel", "no-such-job"], ["wait", "no-such-job"],
                 ["logs", "no-such-job"], ["delete", "no-such-job"]):
        outcome = cnclip(*args, url=control.base_url)
        assert outcome.code == 2, (args, outcome)
        assert "no job no-such-job" in outcome.one_line_error()


@pytest.mark.parametrize("value, expected", [("6", 6), ("true", True), ("[a.pt, b.pt]", ["a.pt", "b.pt"]),
                                             ("live", "live"), ("0.5", 0.5)])
def test_set_values_are_read_as_yaml(value, expected):
    from services.client.spec import parse_set

    assert parse_set([f"key={value}"]) == {"key": expected}
