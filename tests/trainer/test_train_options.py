"""`cnclip train` refuses malformed options with a clear message, before any work is done."""
from __future__ import annotations

import pytest

from services.trainer.cli import main
from services.trainer.commands.train import online_mode


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _data_dirs(tmp_path):
    split = tmp_path / "lmdb" / "train"
    (split / "imgs").mkdir(parents=True)
    (split / "pairs").mkdir()
    return split


def test_max_steps_and_max_epochs_are_exclusive(tmp_path, capsys):
    split = _data_dirs(tmp_path)
    code, text = _run(["train", "--train-data", str(split), "--max-steps", "5", "--max-epochs", "2"], capsys)
    assert code == 2
    assert "not allowed with argument --max-steps" in text


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got 0"),
    (["--lr", "-1"], "--lr: must be a finite number > 0"),
    (["--beta2", "1.5"], "--beta2: must be in [0, 1)"),
    (["--valid-epoch-interval", "-3"], "must be a positive interval or -1 (never)"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--loss", "triplet"], "invalid choice: 'triplet'"),
])
def test_bad_values_are_named(tmp_path, capsys, argv, message):
    split = _data_dirs(tmp_path)
    code, text = _run(["train", "--train-data", str(split), *argv], capsys)
    assert code == 2
    assert message in text


@pytest.mark.parametrize("argv", [["--online", "live"], ["--online", "cache"], ["--online-learning"],
                                  ["--online-learning", "--online-cache"]])
def test_online_learning_is_refused_in_this_build(tmp_path, capsys, argv):
    split = _data_dirs(tmp_path)
    code, text = _run(["train", "--train-data", str(split), "--logs", str(tmp_path), *argv], capsys)
    assert code == 2
    assert "not available in this build" in text and "only --online off is supported" in text
    assert not (tmp_path / "train_clip").exists()


def test_prototype_spellings_of_online_modes():
    class Args:
        online = None
        online_learning = True
        online_cache = True

    assert online_mode(Args) == "cache"
    Args.online_cache = False
    assert online_mode(Args) == "live"
    Args.online, Args.online_learning = None, False
    assert online_mode(Args) == "off"
    Args.online_cache = True
    with pytest.raises(ValueError, match="--online-cache needs --online-learning"):
        online_mode(Args)


def test_missing_or_incomplete_data_dirs(tmp_path, capsys):
    code, text = _run(["train", "--train-data", str(tmp_path / "nowhere"), "--logs", str(tmp_path)], capsys)
    assert code == 2 and "is not a directory" in text
    half = tmp_path / "half"
    (half / "imgs").mkdir(parents=True)
    code, text = _run(["train", "--train-data", str(half), "--logs", str(tmp_path)], capsys)
    assert code == 2 and "has no pairs LMDB" in text


def test_unknown_models_and_missing_resume(tmp_path, capsys):
    split = _data_dirs(tmp_path)
    code, text = _run(["train", "--train-data", str(split), "--vision-model", "ViT-Z-99"], capsys)
    assert code == 2 and "unknown vision model 'ViT-Z-99'" in text
    code, text = _run(["train", "--train-data", str(split), "--resume", str(tmp_path / "gone.pt")], capsys)
    assert code == 2 and "gone.pt: no such file" in text


def test_step_validation_needs_validation_data(tmp_path, capsys):
    split = _data_dirs(tmp_path)
    code, text = _run(["train", "--train-data", str(split), "--valid-step-interval", "5"], capsys)
    assert code == 2 and "--valid-step-interval needs --val-data" in text
