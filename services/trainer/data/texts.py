"""The queries of a split, read from its ``{split}_texts.jsonl`` (format: ``shared.muge``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from services.trainer.tokenizer import DEFAULT_CONTEXT_LENGTH, tokenize
from shared.muge import read_texts


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
