"""What a query may be. Each rule's refusal is one sentence naming the problem (a 422)."""
from __future__ import annotations

import unicodedata

MAX_QUERY_CHARS = 512  # a product query is a few words; the text tower reads ~50 tokens anyway
MAX_K = 1000


class BadQuery(ValueError):
    pass


def clean_query(text: str | None) -> str:
    if text is None or not text.strip():
        raise BadQuery("q is empty: give the words to search for")
    if len(text) > MAX_QUERY_CHARS:
        raise BadQuery(f"q has {len(text)} characters; at most {MAX_QUERY_CHARS} are searched")
    controls = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn")
                       and c not in "\t\n\r"})
    if controls:
        raise BadQuery(f"q holds control or unassigned characters ({', '.join(controls[:5])})")
    return " ".join(text.split())
