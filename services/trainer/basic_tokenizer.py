"""BERT's basic tokenisation (the step before WordPiece), exactly as Chinese-CLIP runs it.

Chinese-CLIP's BasicTokenizer walks a text character by character in Python: it drops control
and format characters (categories Cc and Cf, NUL and U+FFFD), turns whitespace into spaces, puts
spaces around CJK ideographs, splits on whitespace, then lower-cases each word, strips accents
(NFD, then drops non-spacing marks, Mn) and splits punctuation off (ASCII symbols and every P*
category). Here the same steps are two ``str.translate`` tables and str methods, so they run at
C speed. The tables are built from this interpreter's own ``unicodedata``, the tables Chinese-CLIP
consults, so every code point is classified as it classifies it; the Unicode tables compiled
into Rust tokenizers are of other versions and disagree on hundreds of code points.
"""
from __future__ import annotations

import sys
import unicodedata
from functools import lru_cache

# What BERT counts as a CJK ideograph (Chinese-CLIP's _is_chinese_char), inclusive ranges.
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# A Python str may hold lone surrogates; the Rust strings WordPiece works on cannot. A word that
# holds a character found in no vocabulary entry becomes [UNK] whatever that character is, so a
# private-use stand-in (the vocabulary has none) yields the same ids.
SURROGATE_STAND_IN = "\ue000"
_KEPT_AS_WHITESPACE = frozenset("\t\n\r")  # control characters BERT treats as spaces


def _is_punctuation(code_point: int, category: str) -> bool:
    # BERT counts every non-alphanumeric ASCII character as punctuation, "$" and "^" included.
    return category[0] == "P" or (code_point < 127 and (
        33 <= code_point <= 47 or 58 <= code_point <= 64 or 91 <= code_point <= 96 or 123 <= code_point <= 126))


@lru_cache(maxsize=1)
def translation_tables() -> tuple[dict[int, str | None], dict[int, str | None]]:
    """(cleaning table, splitting table) for ``str.translate``.

    The cleaning table removes control characters, maps whitespace to a space, pads CJK
    ideographs with spaces and replaces surrogates; it applies to the raw text. The splitting
    table removes non-spacing marks and pads punctuation with spaces; it applies after
    lower-casing and NFD, as Chinese-CLIP applies them. Built once (about a second)."""
    categories = list(map(unicodedata.category, map(chr, range(sys.maxunicode + 1))))
    cleaning: dict[int, str | None] = {
        code_point: None for code_point, category in enumerate(categories) if category in ("Cc", "Cf")
    }
    cleaning[0xFFFD] = None
    cleaning.update((code_point, SURROGATE_STAND_IN)
                    for code_point, category in enumerate(categories) if category == "Cs")
    cleaning.update((code_point, " ") for code_point, category in enumerate(categories) if category == "Zs")
    cleaning.update((ord(char), " ") for char in _KEPT_AS_WHITESPACE)
    for first, last in CJK_RANGES:
        cleaning.update((code_point, f" {chr(code_point)} ") for code_point in range(first, last + 1))
    splitting: dict[int, str | None] = {
        code_point: None for code_point, category in enumerate(categories) if category == "Mn"
    }
    splitting.update((code_point, f" {chr(code_point)} ") for code_point, category in enumerate(categories)
                     if _is_punctuation(code_point, category))
    del cleaning[ord(" ")]  # identity: leaving it out keeps ASCII text on translate's fast path
    return cleaning, splitting


def basic_words(text: str) -> list[str]:
    """The words Chinese-CLIP's BasicTokenizer (lower-casing) makes of ``text``, in order."""
    cleaning, splitting = translation_tables()
    text = text.translate(cleaning).lower()
    if not text.isascii():  # NFD leaves ASCII unchanged
        text = unicodedata.normalize("NFD", text)
    # Whole-text lower() and NFD equal Chinese-CLIP's per-word ones: words are separated by
    # spaces, which end a final-sigma context and a run of combining marks alike.
    return text.translate(splitting).split()
