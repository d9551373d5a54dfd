"""``--trace-batches``: a per-rank audit of data order. One JSON line per training step (the
text ids it learnt from) and per online batch (the online learner's record), written to
``{prefix}.rank{rank}.jsonl``; the file is opened at the first record."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO


class BatchTrace:
    def __init__(self, prefix: str | Path | None, rank: int):
        self.path = None if prefix is None else Path(f"{prefix}.rank{rank}.jsonl")
        self._file: TextIO | None = None

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
