"""How many online steps each evaluation batch takes, and at what rate in training.

The prototype takes one step per validation batch at the schedule's current rate, so the amount
learnt online is a side effect of how often validation runs: validating every 100 steps instead
of once an epoch changes it tenfold, and a pass at the end of a cosine schedule learns nothing.
With a ratio, a pass earns ``ratio`` online steps per training step taken since the last pass,
spread evenly over its batches (the fraction left over carries to the next batch and pass), and
the steps take the mean of the schedule's rates over those training steps. Both the number of
online steps and the learning they do (steps x rate) then add up to the same totals whatever
the validation schedule. At test time there is no training to earn from: every test batch takes
``test_steps`` steps in each pass. Every rank computes the same numbers from the same inputs,
so ranks stay in lock-step.
"""
from __future__ import annotations

import math
from collections.abc import Callable


class StepBudget:
    def __init__(self, ratio: float | None, start_step: int = 0, *,
                 schedule: Callable[[int], float] | None = None, test_steps: int = 1):
        self.ratio = ratio
        self.last_step = start_step
        self.schedule = schedule  # the training schedule's rate at a step
        self.test_steps = test_steps
        self.rate: float | None = None  # this pass's earned rate (None: the optimizer's current one)
        self._per_batch = 1.0
        self._credit = 0.0

    def start_pass(self, train_step: int | None, batches: int | None) -> None:
        """A pass over ``batches`` batches at training step ``train_step`` (None at test time)."""
        self.rate = None
        if train_step is None:
            self._per_batch = float(self.test_steps)
            return
        if self.ratio is None or not batches:
            self._per_batch = 1.0  # the prototype: one step per validation batch
            return
        earned = range(self.last_step, max(self.last_step, train_step))
        self.last_step = train_step
        self._per_batch = self.ratio * len(earned) / batches
        if self.schedule is not None and len(earned):
            self.rate = sum(self.schedule(step) for step in earned) / len(earned)

    def spread(self, steps: int, batches: int | None) -> None:
        """A pass that takes ``steps`` steps over its ``batches`` batches, at the optimizer's
        current rate (the steps owed when they were taken during training)."""
        self.rate = None
        self._per_batch = steps / batches if batches else 0.0

    def steps_for_batch(self) -> int:
        self._credit += self._per_batch
        steps = math.floor(self._credit + 1e-9)  # 1e-9: sums of thirds must not lose a step
        self._credit -= steps
        return steps
