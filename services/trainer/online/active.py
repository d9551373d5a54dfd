"""Active crawling: ask the crawler only for the queries online learning has most to gain from.

A crawl request is the expensive part of online learning (a browser, a page on a site that
limits how many it serves an account), and most of a pass's queries are about things the model
already learnt from its training data: their pictures teach it little. What it does not know are
the words its training texts never or rarely used (a new colour, a new product). So the queries
are ranked by novelty: the document frequency, in the training texts, of each of their tokens,
rarest first (a query with a word never seen outranks one whose rarest word is seen once, ties go
to the next rarest word), and the run asks for at most ``share`` of a split's distinct queries,
the most novel first. Queries whose pictures are already in the cache cost nothing: they are
always used, and do not count against the share.

The choice needs no model pass and no picture, so it can be made when the job starts, before the
first crawl (crawl-ahead), and it is the same for every run over the same data.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Callable, Iterable, Sequence

from services.trainer.tokenizer import text_ids

log = logging.getLogger("cnclip.online")


class CrawlChooser:
    """Which queries of a split this run asks the crawler for (per rank: each rank chooses among
    its own queries)."""

    def __init__(self, share: float, known_texts: Iterable[str], cached: Callable[[str, str], bool]):
        if not 0 < share <= 1:
            raise ValueError(f"the crawl share must be in (0, 1], got {share}")
        self.share = share
        self.cached = cached  # (split, query) -> its pictures are in the cache already
        self.frequency: Counter = Counter()  # token id -> how many training texts use it
        for text in known_texts:
            self.frequency.update(set(text_ids(text)))
        self._met: dict[str, set[str]] = {}  # split -> distinct queries met so far
        self._asked: dict[str, set[str]] = {}  # split -> queries chosen for the crawler

    def novelty(self, query: str) -> tuple[int, ...]:
        """Sorts most novel first: the training-text counts of the query's tokens, rarest first."""
        return tuple(sorted(self.frequency[token] for token in set(text_ids(query))))

    def choose(self, split: str, queries: Sequence[str]) -> tuple[set[str], int]:
        """The queries of ``queries`` to learn from (those asked for, now or before, and those in
        the cache) and how many were left uncrawled because they are the least novel."""
        met = self._met.setdefault(split, set())
        asked = self._asked.setdefault(split, set())
        distinct = list(dict.fromkeys(queries))
        met.update(distinct)
        in_cache = {q for q in distinct if q not in asked and self.cached(split, q)}
        room = math.ceil(self.share * len(met) - 1e-9) - len(asked)
        candidates = sorted((q for q in distinct if q not in asked and q not in in_cache), key=self.novelty)
        asked.update(candidates[:max(room, 0)])
        use = {q for q in distinct if q in asked} | in_cache
        return use, len(distinct) - len(use)


def chooser_from(share: float | None, texts_of: Callable[[], dict], cached: Callable[[str, str], bool],
                 where: str | None) -> CrawlChooser | None:
    """The run's chooser, or None (every query is crawled) without a share or without training
    texts to measure novelty against (``where`` names them, for the log)."""
    if share is None or share >= 1:
        return None
    if where is None:
        log.warning("active crawling needs the training texts (online_replay_data at test time): "
                    "every query is crawled")
        return None
    texts = texts_of()
    log.info("active crawling: at most %.0f%% of each split's queries, novelty measured on %d texts of %s",
             share * 100, len(texts), where)
    return CrawlChooser(share, texts.values(), cached)
