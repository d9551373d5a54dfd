"""`cnclip train` refuses malformed options with a clear message, before any work is done."""
from __future__ import annotations

import pytest

from services.trainer.cli import main
from shared.options import online_from_legacy


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
    assert "--max-epochs: give max_steps or max_epochs, not both" in text


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1 (got '0')"),
    (["--lr", "-1"], "--lr: Input should be greater than 0"),
    (["--lr", "nan"], "--lr: Input should be a finite number"),
    (["--beta2", "1.5"], "--beta2: Input should be less than 1"),
    (["--valid-epoch-interval", "-3"], "--valid-epoch-interval: Input should be greater than or equal to 1"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--loss", "triplet"], "invalid choice: 'triplet'"),
])
def test_bad_values_are_named(tmp_path, capsys, argv, message):
    split = _data_dirs(tmp_path)
    code, text = _run(["train", "--train-data", str(split), *argv], capsys)
    assert code == 2
    assert message in text


def test_online_learning_needs_validation_data(tmp_path, capsys):
    split = _data_dirs(tmp_path)
    code, text = _run(["train", "--train-data", str(split), "--logs", str(tmp_path), "--online-learning"], capsys)
    assert code == 2
    assert "--online: online 'live' learns during validation and needs val_data" in text
    assert not (tmp_path / "train_clip").exists()


def test_prototype_spellings_of_online_modes():
    assert online_from_legacy(None, True, True) == "cache"
    assert online_from_legacy(None, True, False) == "live"
    assert online_from_legacy(None, False, False) is None
    assert online_from_legacy("live", True, False) == "live"
    with pytest.raises(ValueError, match="--online-cache needs --online-learning"):
        online_from_legacy(None, False, True)
    with pytest.raises(ValueError, match="--online off contradicts --online-learning"):
        online_from_legacy("off", True, False)


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
    assert code == 2 and "--valid-step-interval: valid_step_interval needs val_data" in text
