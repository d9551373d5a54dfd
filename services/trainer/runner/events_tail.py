"""Follows the JSON-lines events file the trainer writes (``--events FILE``)."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from shared.messages import JobEvent


class EventFileTail:
    """Returns the complete lines appended since the last read; a half-written last line
    waits for its newline. Lines that are not JobEvents become ``log`` events, so nothing
    the trainer says is lost."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read(self) -> list[JobEvent]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        events = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(JobEvent.model_validate(json.loads(line)))
            except (ValueError, ValidationError):
                events.append(JobEvent(type="log", data={"level": "warning",
                                                         "message": line.decode(errors="replace")}))
        return events
