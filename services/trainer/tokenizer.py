"""BERT-Chinese WordPiece tokenisation, giving the same ids as Chinese-CLIP.

The 21128-token vocabulary ships in services/trainer/resources/vocab.txt. The ids equal those of
``cn_clip.clip.tokenize`` applied after Chinese-CLIP's text preprocessing, for every code point
and for words of any length: ``basic_tokenizer`` reproduces Chinese-CLIP's basic tokenisation
with its Unicode rules, and the `tokenizers` library's WordPiece model splits each word with the
same greedy longest-match and the same 200-character limit. Product titles repeat most of their
words (every CJK character is one), so each word's pieces are remembered.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers.models import WordPiece

from services.trainer.basic_tokenizer import SURROGATE_STAND_IN, basic_words

if TYPE_CHECKING:
    from transformers import BertTokenizer

RESOURCES_DIR = Path(__file__).resolve().parent / "resources"
VOCAB_PATH = RESOURCES_DIR / "vocab.txt"
DEFAULT_CONTEXT_LENGTH = 52
MAX_WORD_CHARS = 200  # longer words become one [UNK], as in BERT's WordpieceTokenizer
UNKNOWN, CLS, SEP, PAD = "[UNK]", "[CLS]", "[SEP]", "[PAD]"
WORD_CACHE_SIZE = 1 << 18


@lru_cache(maxsize=1)
def get_tokenizer() -> BertTokenizer:
    """transformers' tokenizer for this vocabulary, saved next to exported models.

    Loaded with from_pretrained on the directory that holds vocab.txt because constructing it
    from a vocab_file maps every token to [UNK] in transformers 5."""
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(RESOURCES_DIR), do_lower_case=True)


@lru_cache(maxsize=1)
def load_vocab() -> dict[str, int]:
    """Token -> id, read as Chinese-CLIP reads vocab.txt: one token per line, stripped of
    whitespace (so the line holding U+2028 is the empty token), the id is the line number."""
    vocab: dict[str, int] = {}
    with open(VOCAB_PATH, encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            vocab[line.strip()] = index
    if any(SURROGATE_STAND_IN in token for token in vocab):
        raise ValueError(f"{VOCAB_PATH} holds U+{ord(SURROGATE_STAND_IN):04X}, the stand-in for surrogates")
    return vocab


@lru_cache(maxsize=1)
def _wordpiece() -> WordPiece:
    return WordPiece(load_vocab(), unk_token=UNKNOWN, max_input_chars_per_word=MAX_WORD_CHARS)


@lru_cache(maxsize=WORD_CACHE_SIZE)
def word_ids(word: str) -> tuple[int, ...]:
    """WordPiece ids of one word of ``basic_words``' output."""
    return tuple(token.id for token in _wordpiece().tokenize(word))


def normalize_text(text: str) -> str:
    """Lower-case and straighten curly double quotes, as Chinese-CLIP's datasets do before tokenising."""
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


def text_ids(text: str) -> list[int]:
    """The token ids of ``text`` (normalised here), without [CLS], [SEP] or truncation."""
    ids: list[int] = []
    for word in basic_words(normalize_text(text)):
        ids.extend(word_ids(word))
    return ids


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
    vocab = load_vocab()
    cls, sep, pad = vocab[CLS], vocab[SEP], vocab[PAD]
    room = context_length - 2
    rows = []
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {row} is {type(text).__name__}, not str")
        ids = text_ids(text)[:room]
        rows.append([cls, *ids, sep, *[pad] * (room - len(ids))])
    input_ids = torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)
    attention_mask = (input_ids != pad).long()
    return input_ids, attention_mask
