"""The queries of a split, read from its ``{split}_texts.jsonl``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from services.trainer.tokenizer import DEFAULT_CONTEXT_LENGTH, tokenize


@dataclass(frozen=True)
class TextRecord:
    text_id: Any
    text: str
    image_ids: tuple[Any, ...]  # ground truth; empty when the file has none (a test set)


def read_texts(path: str | Path, require_image_ids: bool = False) -> list[TextRecord]:
    """Every record of a texts jsonl. A malformed line raises ``ValueError`` naming the file
    and line: a query file with holes would make every later id and metric wrong."""
    records: list[TextRecord] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict) or "text_id" not in obj or "text" not in obj:
                raise ValueError(f"{where}: expected an object with 'text_id' and 'text'")
            text_id, text = obj["text_id"], obj["text"]
            if isinstance(text_id, bool) or not isinstance(text_id, (int, str)):
                raise ValueError(f"{where}: 'text_id' must be an integer or a string")
            if not isinstance(text, str):
                raise ValueError(f"{where}: 'text' must be a string")
            if str(text_id) in seen:
                raise ValueError(f"{where}: text_id {text_id} appears twice")
            seen.add(str(text_id))
            image_ids = obj.get("image_ids", [])
            if not isinstance(image_ids, list) or (require_image_ids and not image_ids):
                raise ValueError(f"{where}: 'image_ids' must be a non-empty list")
            records.append(TextRecord(text_id, text, tuple(image_ids)))
    return records


class TextsDataset(Dataset):
    """Item ``i`` is ``(text_id, text, input_ids, attention_mask)``."""

    def __init__(self, jsonl: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        self.path = Path(jsonl)
        self.records = read_texts(self.path)
        self.context_length = context_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        input_ids, attention_mask = tokenize([record.text], self.context_length)
        return record.text_id, record.text, input_ids[0], attention_mask[0]

    @property
    def text_ids(self) -> list[Any]:
        return [r.text_id for r in self.records]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.records]
