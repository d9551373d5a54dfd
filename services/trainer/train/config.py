"""Settings of one training run: the job options of shared/options.py plus where the run
writes. No defaults of its own: every default is the option model's."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import model_validator

from shared.layout import default_places, fill_unset
from shared.options import TrainOptions, TrainRunOptions
from shared.settings import common_settings


class ConfigError(ValueError):
    """Options that cannot make a run (named in the message)."""


class TrainConfig(TrainOptions, TrainRunOptions):
    @model_validator(mode="after")
    def _default_places(self) -> "TrainConfig":
        fill_unset(self, default_places(common_settings().data_root))
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.logs).expanduser() / self.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def progress(self) -> bool:
        return not self.no_progress

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def check(self) -> None:
        """What only the file system can tell: the data and the checkpoint exist."""
        for option, folder in (("--train-data", self.train_data), ("--val-data", self.val_data)):
            if folder is None:
                continue
            path = Path(folder).expanduser()
            if not path.is_dir():
                raise ConfigError(f"{option} {folder} is not a directory (expected an LMDB split dir such as .../lmdb/train)")
            missing = [sub for sub in ("imgs", "pairs") if not (path / sub).is_dir()]
            if missing:
                raise ConfigError(f"{option} {folder} has no {' or '.join(missing)} LMDB (build it with cnclip build-lmdb)")
        if self.resume is not None and not Path(self.resume).expanduser().exists():
            raise ConfigError(f"--resume {self.resume}: no such file or directory")
