"""Settings of one prediction: the job options of shared/options.py plus where it writes.
No defaults of its own: every default is the option model's (or the data root's folders)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import model_validator

from shared.layout import default_places, fill_unset
from shared.options import PredictOptions, PredictRunOptions
from shared.settings import common_settings


class PredictConfig(PredictOptions, PredictRunOptions):
    @model_validator(mode="after")
    def _default_places(self) -> "PredictConfig":
        fill_unset(self, default_places(common_settings().data_root, predict_mode=self.mode))
        return self

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def check(self) -> None:
        """What only the file system can tell: the inputs exist."""
        if self.mode != "ensemble-last":
            if not Path(self.text_data).is_file():
                raise ValueError(f"texts file not found: {self.text_data}")
            if not Path(self.image_data).is_dir():
                raise ValueError(f"image LMDB not found: {self.image_data}")
        if self.mode == "single" and not Path(self.resume).exists():
            raise ValueError(f"checkpoint not found: {self.resume}")
        if self.mode == "ensemble":
            missing = [m for m in self.members if not Path(m).exists()]
            if missing:
                raise ValueError(f"checkpoint not found: {', '.join(missing)}")
