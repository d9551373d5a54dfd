"""Query normalisation and cache keys, shared by the crawler (what it types) and the trainer
(where it caches what came back), so both sides agree on what "the same query" is."""
from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_QUERY_CHARS = 100  # search boxes cut long input; longer queries add nothing but risk
_SPACES = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """NFKC (full-width letters and digits become ASCII), control characters such as NUL
    dropped, runs of whitespace collapsed to one space, trimmed and capped in length.
    Punctuation is kept: it is part of what a shopper would type."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in " \t\n")
    text = _SPACES.sub(" ", text).strip()
    return text[:MAX_QUERY_CHARS].strip()


def query_key(text: str) -> str:
    """Stable file-system- and Redis-safe key of a query: never the text itself."""
    return hashlib.sha256(normalize_query(text).encode("utf-8")).hexdigest()[:32]
