"""`cnclip convert` between Chinese-CLIP .pt files and transformers directories."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import ChineseCLIPModel

from services.trainer.cli import main
from services.trainer.model.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[2]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pt_to_directory_and_back(tmp_path, tiny_checkpoint, capsys):
    directory = tmp_path / "hf"
    assert main(["convert", str(tiny_checkpoint), str(directory)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["to"] == "transformers"
    assert (summary["vision_model"], summary["text_model"]) == ("tiny", "tiny")
    assert (summary["epoch"], summary["step"], summary["name"]) == (1, 1, "tiny")
    assert summary["optimizer_dropped"] is True
    model = ChineseCLIPModel.from_pretrained(directory, local_files_only=True)
    original = read_checkpoint(tiny_checkpoint)["state_dict"]
    assert same_state(model.state_dict(), original)

    back = tmp_path / "back.pt"
    assert main(["convert", str(directory), str(back)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["to"] == "pt" and summary["step"] == 1
    raw = torch.load(back, weights_only=True)
    assert set(raw) >= {"epoch", "step", "name", "state_dict", "optimizer"}
    assert same_state(read_checkpoint(back)["state_dict"], original)


def test_refusals_leave_files_alone(tmp_path, tiny_checkpoint, capsys):
    existing = tmp_path / "out.pt"
    existing.write_bytes(b"keep me")
    assert main(["convert", str(tiny_checkpoint), str(existing)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"

    assert main(["convert", str(tmp_path / "nothing.pt"), str(tmp_path / "x")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not torch")
    assert main(["convert", str(garbage), str(tmp_path / "y")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err

    assert main(["convert", str(tiny_checkpoint), str(tmp_path / "z"), "--text-model", "RBT3"]) == 2
    err = capsys.readouterr().err
    assert "does not fit model tiny@RBT3-chinese" in err and str(tiny_checkpoint) in err
    assert not (tmp_path / "z").exists() and not (tmp_path / "y").exists()

    assert main(["convert", str(tiny_checkpoint), str(tmp_path / "w"), "--vision-model", "ViT-Q"]) == 2
    assert "unknown vision model 'ViT-Q'" in capsys.readouterr().err


def test_overwrite_and_command_line_entry(tmp_path, tiny_checkpoint):
    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "stale.txt").write_text("old")
    result = subprocess.run(
        [sys.executable, "-m", "services.trainer", "convert", str(tiny_checkpoint), str(directory), "--overwrite"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["dest"] == str(directory)
    assert not (directory / "stale.txt").exists() and (directory / "config.json").is_file()
