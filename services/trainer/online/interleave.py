"""Online steps taken during training (``online_schedule training``), so the schedule of
validation has no say in how much, when or on what the model learns online.

Taking the budget's steps at validation passes ties them to the validation schedule even when
their number is fixed: validating every 100 steps puts 25 consecutive online steps on one pass's
queries at step 100, where validating every epoch spreads them and starts them at the first
epoch's end. Here each online step is taken as soon as training steps have earned it
(``online_step_ratio`` per training step), between two training steps, at the schedule's rate
of that moment, on the next batch of validation queries (this rank's, in validation order, those
active crawling chose) whose crawled images are already in the cache; the live source crawls
them from the job's start, so nothing here waits for a browser. Queries not in the cache yet are
passed over (counted ``not_cached``), so a step has a full batch of pairs whenever the cache
holds that many, live or from the cache alike; a step none of the ranks has a pair for is owed
and taken later, at most ``MAX_EXTRA_STEPS`` more per training step, so a slow crawl does not end in a
burst. One walk through the queries is one online pass (its events, its pictures' agreement).

Every rank derives the steps owed from the training step alone, so ranks stay in lock-step.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Owed steps (earned while no rank had a pair) taken per training step on top of those earned.
MAX_EXTRA_STEPS = 1


@dataclass
class QueryBatch:
    index: int  # the batch's position in its walk
    texts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    not_ready: int = 0  # queries passed over on the way to this batch: no pictures in the cache yet


class TrainingTimeSteps:
    """When an online step is owed during training, and on which validation queries."""

    def __init__(self, ratio: float, batch_size: int, tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
                 start_step: int = 0):
        if ratio <= 0:
            raise ValueError(f"online steps during training need a positive online_step_ratio, got {ratio}")
        self.ratio = ratio
        self.batch_size = max(1, batch_size)
        self.tokenize = tokenize
        self.last_step = start_step
        self.split: str | None = None
        self._texts: list[str] = []
        self._credit = 0.0
        self._cursor = 0  # the next query of the walk to look at
        self._batch = 0  # batches handed out in this walk

    def plan(self, split: str, texts: Sequence[str]) -> None:
        """The queries to learn from, in order (each distinct text once)."""
        self.split = split
        self._texts = list(dict.fromkeys(texts))
        self._cursor = self._batch = 0

    @property
    def texts(self) -> list[str]:
        return self._texts

    @property
    def planned(self) -> bool:
        return bool(self._texts)

    def earn(self, train_step: int) -> int:
        """Credits the training steps up to ``train_step``; how many online steps to try now."""
        earned = max(0, train_step - self.last_step)
        self.last_step = max(self.last_step, train_step)
        self._credit += self.ratio * earned
        owed = math.floor(self._credit + 1e-9)  # 1e-9: sums of quarters must not lose a step
        return min(owed, math.ceil(self.ratio * max(earned, 1) - 1e-9) + MAX_EXTRA_STEPS)

    def spent(self) -> None:
        self._credit -= 1

    def take_owed(self) -> int:
        """The whole steps still owed, handed to a validation pass (which waits for its
        queries' pictures), and no longer owed here."""
        owed = math.floor(self._credit + 1e-9)
        self._credit -= owed
        return owed

    @property
    def starts_walk(self) -> bool:
        """Whether the next batch is the first of a walk (a new online pass)."""
        return self._cursor == 0

    def next_batch(self, ready: Callable[[str], bool]) -> QueryBatch:
        """The next ``batch_size`` queries of the walk that are ``ready`` (their pictures are in
        the cache), passing over the others; the walk ends at the last query (``ends_walk``)."""
        texts, passed_over = [], 0
        while self._cursor < len(self._texts) and len(texts) < self.batch_size:
            text = self._texts[self._cursor]
            self._cursor += 1
            if ready(text):
                texts.append(text)
            else:
                passed_over += 1
        index = self._batch
        self._batch += 1
        if self._cursor >= len(self._texts):
            self._cursor = self._batch = 0
        input_ids, attention_mask = self.tokenize(texts)
        return QueryBatch(index, texts, input_ids, attention_mask, passed_over)

    @property
    def ends_walk(self) -> bool:
        """Whether the batch just handed out was its walk's last."""
        return self._cursor == 0
