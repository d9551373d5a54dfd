"""BERT-Chinese WordPiece tokenisation, giving the same ids as Chinese-CLIP.

The 21128-token vocabulary ships in services/trainer/resources/vocab.txt. transformers'
BertTokenizer does the WordPiece work; it is loaded with from_pretrained on the directory that
holds vocab.txt because constructing it from a vocab_file maps every token to [UNK] in
transformers 5.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from transformers import BertTokenizer

RESOURCES_DIR = Path(__file__).resolve().parent / "resources"
DEFAULT_CONTEXT_LENGTH = 52


@lru_cache(maxsize=1)
def get_tokenizer() -> BertTokenizer:
    return BertTokenizer.from_pretrained(str(RESOURCES_DIR), do_lower_case=True)


def normalize_text(text: str) -> str:
    """Lower-case and straighten curly double quotes, as Chinese-CLIP's datasets do before tokenising."""
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


def tokenize(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask), both LongTensor [len(texts), context_length].

    Each row is `[CLS] tokens [SEP]` followed by [PAD] (id 0); tokens beyond context_length - 2
    are dropped so [SEP] always ends the sequence. The mask is 1 on real tokens.
    """
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 ([CLS] and [SEP]), got {context_length}")
    tokenizer = get_tokenizer()
    input_ids = torch.full((len(texts), context_length), tokenizer.pad_token_id, dtype=torch.long)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {row} is {type(text).__name__}, not str")
        pieces = tokenizer.tokenize(normalize_text(text))[: context_length - 2]
        ids = [tokenizer.cls_token_id, *tokenizer.convert_tokens_to_ids(pieces), tokenizer.sep_token_id]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    return input_ids, attention_mask
