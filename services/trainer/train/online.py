"""The seam for online learning.

During validation (training) and on test batches (prediction) the loop calls
``hook.on_eval_batch(split, batch_index, batch)`` once per batch, before the batch is embedded,
with the batch itself (texts, token ids and attention mask included). An online learner takes
its training step there. ``before_eval(split, texts, epoch=, train_step=, batches=)`` / ``after_eval(split)`` bracket
each pass so a learner can submit all queries ahead (crawl ahead, never block the accelerator),
size its online budget by the training steps since the last pass, and report its totals; ``prefetch(split, texts)``, called when training starts, lets it fetch what the
passes will need while the job trains. The learner (services/trainer/online/learner.py) holds its own narrow context
(the step unit, the process group, where to report); the hook is never given the trainer.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable


@runtime_checkable
class OnlineHook(Protocol):
    def prefetch(self, split: str, texts: Sequence[str]) -> None: ...

    def before_eval(self, split: str, texts: Sequence[str], *, epoch: int | None = None,
                    train_step: int | None = None, batches: int | None = None) -> None: ...

    def on_eval_batch(self, split: str, batch_index: int, batch: Any) -> None: ...

    def after_eval(self, split: str) -> None: ...


class NoOnline:
    """Plain offline evaluation: every call does nothing."""

    online_steps = 0

    def prefetch(self, split: str, texts: Sequence[str]) -> None:
        pass

    def before_eval(self, split: str, texts: Sequence[str], *, epoch: int | None = None,
                    train_step: int | None = None, batches: int | None = None) -> None:
        pass

    def on_eval_batch(self, split: str, batch_index: int, batch: Any) -> None:
        pass

    def after_eval(self, split: str) -> None:
        pass

    def close(self) -> None:
        pass
