"""The seam for online learning: the ``OnlineHook`` protocol the training loop calls, and
``NoOnline`` for runs without it.

The hook is built outside the trainer (train/run.py, from the run's parts) and injected; it
holds its own narrow context (the engine's step runner, the process group, where to report)
and is never given the trainer. The loop calls, per validation pass:

- ``prefetch(split, texts)`` once, when training starts: fetch what the passes will need while
  the job trains;
- ``before_eval(split, texts, epoch=, train_step=, batches=)``: all of this rank's queries of
  the pass in batch order (crawl ahead, never block the accelerator), the epoch, the training
  step reached and the pass's batch count (the online budget is sized by the steps since the
  last pass);
- ``on_eval_batch(split, batch_index, batch)`` once per batch, before it is embedded, with the
  batch as loaded (texts, token ids and attention mask): the learner steps there;
- ``after_eval(split)``: report the pass's totals;

and after every training step ``after_train_step(step, epoch)`` (the step count reached and its
epoch, counted from 1): where the online steps are taken during training (``online_schedule
training``), the hook takes there those the training steps have earned, and a validation pass
takes only those still owed.

``online_steps`` (online steps taken over the run) goes into every checkpoint; ``epoch`` is the
epoch of the last pass (None before one); ``close()`` ends the hook's work when the run ends.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable


@runtime_checkable
class OnlineHook(Protocol):
    online_steps: int
    epoch: int | None

    def prefetch(self, split: str, texts: Sequence[str]) -> None: ...

    def before_eval(self, split: str, texts: Sequence[str], *, epoch: int | None = None,
                    train_step: int | None = None, batches: int | None = None) -> None: ...

    def on_eval_batch(self, split: str, batch_index: int, batch: Any) -> None: ...

    def after_eval(self, split: str) -> None: ...

    def after_train_step(self, step: int, epoch: int) -> None: ...

    def close(self) -> None: ...


class NoOnline:
    """Plain offline evaluation: every call does nothing."""

    def __init__(self) -> None:
        self.online_steps = 0
        self.epoch: int | None = None

    def prefetch(self, split: str, texts: Sequence[str]) -> None:
        pass

    def before_eval(self, split: str, texts: Sequence[str], *, epoch: int | None = None,
                    train_step: int | None = None, batches: int | None = None) -> None:
        pass

    def on_eval_batch(self, split: str, batch_index: int, batch: Any) -> None:
        pass

    def after_eval(self, split: str) -> None:
        pass

    def after_train_step(self, step: int, epoch: int) -> None:
        pass

    def close(self) -> None:
        pass
