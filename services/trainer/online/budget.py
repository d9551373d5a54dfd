"""How many online steps each evaluation batch takes.

The prototype takes one step per validation batch, so the amount learnt online is a side effect
of how often validation runs: validating every 100 steps instead of once an epoch changes it
tenfold. With a ratio, a pass earns ``ratio`` online steps per training step taken since the
last pass and spreads them evenly over its batches; the fraction left over carries to the next
batch and pass. The total is then ``ratio x training steps`` whatever the validation schedule.
Every rank computes the same numbers from the same inputs, so ranks stay in lock-step.
"""
from __future__ import annotations

import math


class StepBudget:
    def __init__(self, ratio: float | None, start_step: int = 0):
        self.ratio = ratio
        self.last_step = start_step
        self._per_batch = 1.0
        self._credit = 0.0

    def start_pass(self, train_step: int | None, batches: int | None) -> None:
        """A pass over ``batches`` batches at training step ``train_step`` (None at test time,
        where every batch takes one step, as the prototype did)."""
        if self.ratio is None or train_step is None or not batches:
            self._per_batch = 1.0
            return
        earned = self.ratio * max(0, train_step - self.last_step)
        self.last_step = train_step
        self._per_batch = earned / batches

    def steps_for_batch(self) -> int:
        self._credit += self._per_batch
        steps = math.floor(self._credit + 1e-9)  # 1e-9: sums of thirds must not lose a step
        self._credit -= steps
        return steps
