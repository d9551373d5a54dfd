"""Settings of one index build: the options of shared/options.py plus where it writes."""
from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from shared import layout
from shared.options import IndexOptions, IndexRunOptions
from shared.settings import common_settings


class IndexConfig(IndexOptions, IndexRunOptions):
    @model_validator(mode="after")
    def _default_places(self) -> "IndexConfig":
        layout.fill_unset(self, {"experiments": str(Path(common_settings().data_root) / layout.EXPERIMENTS)})
        return self

    @property
    def target(self) -> Path:
        return layout.index_dir(self.experiments, self.name)

    @property
    def checkpoints(self) -> list[str]:
        """What embeds the gallery: the checkpoint, or the ensemble's members in order."""
        return list(self.members) if self.members else [self.resume]

    def check(self) -> None:
        """What only the file system can tell: the inputs exist."""
        if not Path(self.image_data).is_dir():
            raise ValueError(f"image LMDB not found: {self.image_data}")
        for checkpoint in self.checkpoints:
            if not Path(checkpoint).exists():
                raise ValueError(f"checkpoint not found: {checkpoint}")
