"""``--report-to tensorboard``: an event sink that writes the run's figures as TensorBoard
scalars under ``experiments/<name>/tensorboard/``, so ``tensorboard --logdir experiments``
lays several runs over each other (where open_clip and Chinese-CLIP users look for them).

It reads the same typed events as every other sink (``shared.messages``): whatever a chart on
/status shows, TensorBoard shows under the same name. The run's options are written once as
its hyperparameters (TensorBoard's HParams tab). Rank 0 only, like every sink."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.messages import JobEvent, OnlineBatch, OnlinePass, TrainStep, Validation
from services.trainer.train.events import plain

TRAIN_TAGS = ("loss", "lr", "samples_per_s", "logit_scale", "img2txt_acc", "txt2img_acc")
VALIDATION_TAGS = ("r1", "r5", "r10", "mr", "loss", "img2txt_acc", "txt2img_acc")
# What the HParams tab shows beside the options (tags written by this sink).
HPARAM_METRICS = ("val/r1", "val/mr", "val/loss", "train/loss")


def hparam_value(value: Any) -> int | float | str | bool:
    """TensorBoard takes numbers, strings and booleans: None and lists are written as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "none" if value is None else str(value)


class TensorBoardSink:
    def __init__(self, log_dir: str | Path, hparams: dict[str, Any] | None = None):
        # torch's writer: the trainer has torch already, and it writes TensorBoard's own format.
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.online_batches = 0
        self.online_passes = 0
        if hparams:
            # Written into this run's own folder (add_hparams would make a sub-run per call).
            values = {k: hparam_value(v) for k, v in sorted(plain(hparams).items())}
            for summary in hparams_summary(values, {m: 0.0 for m in HPARAM_METRICS}):
                self.writer.file_writer.add_summary(summary)

    def _scalars(self, prefix: str, payload: Any, names: tuple[str, ...], step: int) -> None:
        for name, value in payload.set_fields(*names).items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def emit(self, type: str, **data: Any) -> None:
        payload = JobEvent(type=type, data=plain(data)).payload()
        if isinstance(payload, TrainStep) and payload.step is not None:
            self._scalars("train", payload, TRAIN_TAGS, payload.step)
        elif isinstance(payload, Validation) and payload.step is not None:
            self._scalars("val", payload, VALIDATION_TAGS, payload.step)
        elif isinstance(payload, OnlineBatch):
            self.online_batches += 1
            step = payload.online_step if payload.online_step is not None else self.online_batches
            self._scalars("online/batch", payload, ("pairs", "loss", "queries", "dropped_leaked", "wait_ms"), step)
            if payload.missing is not None:
                self.writer.add_scalar("online/batch/missing", sum(payload.missing.values()), step)
        elif isinstance(payload, OnlinePass):
            self.online_passes += 1
            step = self.online_passes
            self._scalars("online/pass", payload, ("pairs", "queries", "cache_hits", "dropped_leaked",
                                                   "steps", "wall_s"), step)
            if payload.missing is not None:
                self.writer.add_scalar("online/pass/missing", sum(payload.missing.values()), step)

    def close(self) -> None:
        self.writer.close()
