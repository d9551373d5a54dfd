"""The seam for online learning.

During validation (training) and on test batches (prediction) the loop calls
``hook.on_eval_batch(split, batch_index, texts, trainer)`` once per batch, before the batch is
embedded, with the batch's query texts. An online learner takes its training step there.
``before_eval`` / ``after_eval`` bracket each pass so a learner can submit all queries ahead
(crawl ahead, never block the accelerator) and report its totals.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

ONLINE_MODES: tuple[str, ...] = ("off", "live", "cache")


class OnlineModeUnsupported(ValueError):
    pass


@runtime_checkable
class OnlineHook(Protocol):
    def before_eval(self, split: str, texts: Sequence[str], trainer: Any) -> None: ...

    def on_eval_batch(self, split: str, batch_index: int, texts: Sequence[str], trainer: Any) -> None: ...

    def after_eval(self, split: str, trainer: Any) -> None: ...


class NoOnline:
    """Plain offline evaluation: every call does nothing."""

    def before_eval(self, split: str, texts: Sequence[str], trainer: Any) -> None:
        pass

    def on_eval_batch(self, split: str, batch_index: int, texts: Sequence[str], trainer: Any) -> None:
        pass

    def after_eval(self, split: str, trainer: Any) -> None:
        pass


def make_online_hook(mode: str) -> OnlineHook:
    """The hook for ``--online MODE``. Only ``off`` is available in this build: ``live`` and
    ``cache`` need the online learner, which this build does not contain yet, so they are
    refused instead of silently training offline."""
    if mode not in ONLINE_MODES:
        raise OnlineModeUnsupported(
            f"unknown online mode {mode!r}; choose one of {', '.join(ONLINE_MODES)}"
        )
    if mode != "off":
        raise OnlineModeUnsupported(
            f"--online {mode} is not available in this build: online learning (live crawling "
            "or the crawled-image cache) is not implemented yet; only --online off is supported"
        )
    return NoOnline()
