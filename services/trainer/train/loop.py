"""The fit loop: Chinese-CLIP fine-tuning under torchrun, with periodic validation and
checkpoints, over a run prepared by train/setup.py (model, engine, data, length, resume point).

One optimizer step consumes ``accum_freq`` batches per rank (engine/step.py, the step runner that
the online learner and test-time adaptation call too).

Positions are counted in optimizer steps: epoch ``e`` holds ``steps_per_epoch`` steps, and a
checkpoint's ``step`` alone says where a resumed run continues (epoch ``step //
steps_per_epoch``, batch ``(step % steps_per_epoch) * accum_freq`` of it). Dropout is reseeded
from (seed, step, rank) before every step, so a resumed run repeats an uninterrupted one exactly
when the data order is deterministic (no augmentation).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from services.trainer.engine.step import StepResult, step_seed
from services.trainer.model.checkpoint import save_checkpoint
from services.trainer.train.data import Batch
from services.trainer.train.events import EventSink, NullSink
from services.trainer.train.online import NoOnline, OnlineHook
from services.trainer.train.schedule import warmup_cosine
from services.trainer.train.setup import RunSetup
from services.trainer.train.trace import BatchTrace
from services.trainer.train.validation import Validator
from shared.messages import Validation

log = logging.getLogger("cnclip.train")


class TrainingError(RuntimeError):
    """A run that cannot go on (the message says why)."""


@dataclass
class TrainResult:
    steps: int
    epochs: int
    checkpoints: list[str] = field(default_factory=list)
    validations: list[Validation] = field(default_factory=list)


class Trainer:
    """Trains a prepared run. The online hook is built outside (train/run.py) and injected; the
    hook is never given the trainer (it holds the engine's step runner and the process group)."""

    def __init__(self, setup: RunSetup, sink: EventSink | None = None, online: OnlineHook | None = None,
                 trace: BatchTrace | None = None):
        self.config = config = setup.config
        self.env = setup.env
        self.device = setup.env.device
        self.engine = setup.engine
        self.model = setup.engine.model
        self.optimizer = setup.engine.optimizer
        self.train_data = setup.train_data
        self.valid_data = setup.valid_data
        self.steps_per_epoch = setup.length.steps_per_epoch
        self.max_steps = setup.length.max_steps
        self.max_epochs = setup.length.max_epochs
        self.step = setup.start_step
        self.sink: EventSink = sink or NullSink()
        self.online: OnlineHook = online or NoOnline()
        self.trace = trace or BatchTrace(None, setup.env.rank)
        self.result = TrainResult(steps=0, epochs=0)
        self.adjust_lr = warmup_cosine(self.optimizer, config.lr, config.warmup, self.max_steps)
        self._validator = (Validator(config, self.env, self.engine, self.valid_data, self.sink, self.online)
                           if self.valid_data is not None else None)

    def train_step(self, batches: list[Batch]) -> StepResult:
        """One optimizer step over ``batches`` (``accum_freq`` of them)."""
        runner = self.engine.runner
        torch.manual_seed(step_seed(self.config.seed, self.step, self.env.rank))
        return runner([runner.to_device(b.images, b.input_ids, b.attention_mask) for b in batches])

    def validate(self, epoch: int) -> Validation:
        if self._validator is None:
            raise TrainingError("this run has no validation data (--val-data)")
        result = self._validator(epoch, self.step)
        self.result.validations.append(result)
        return result

    def fit(self) -> TrainResult:
        config = self.config
        if self.step >= self.max_steps:
            log.info("nothing to train: step %d already reaches the %d steps asked for", self.step, self.max_steps)
            return self.result
        start_epoch = self.step // self.steps_per_epoch
        log.info("training %s@%s: %d steps (%d epochs of %d steps), global batch %d, %d rank(s) on %s",
                 config.vision_model, config.text_model, self.max_steps, self.max_epochs, self.steps_per_epoch,
                 config.batch_size * config.accum_freq * self.env.world_size, self.env.world_size, self.device)
        self.sink.emit("phase", name="train", step=self.step, total_steps=self.max_steps)
        if self.valid_data is not None:
            # Live online learning crawls the validation queries while the model trains.
            self.online.prefetch("valid", self.valid_data.rank_texts())
        for epoch in range(start_epoch, self.max_epochs):
            first_batch = (self.step - epoch * self.steps_per_epoch) * config.accum_freq
            steps_this_epoch = self._train_epoch(epoch, first_batch)
            self.result.epochs = epoch + 1
            if steps_this_epoch == 0:
                break
            validated_now = bool(self.result.validations) and self.result.validations[-1].step == self.step
            if (self.valid_data is not None and config.valid_epoch_interval and not validated_now
                    and (epoch + 1) % config.valid_epoch_interval == 0):
                self.validate(epoch)
            if (epoch + 1) == self.max_epochs or (epoch + 1) % config.save_epoch_frequency == 0:
                self.save(f"epoch{epoch + 1}.pt", epoch + 1)
            else:
                self.save(None, epoch + 1)
            if self.step >= self.max_steps:
                break
        self.result.steps = self.step
        return self.result

    def _train_epoch(self, epoch: int, first_batch: int) -> int:
        config = self.config
        # The loader's worker seeds come from the global generator: fix them per epoch.
        torch.manual_seed(step_seed(config.seed, -1 - epoch, self.env.rank))
        batches = iter(self.train_data.epoch(epoch, first_batch))
        steps_done = 0
        # Throughput is measured over the steps since the last report.
        window_start, window_samples = time.perf_counter(), 0
        for _ in range(first_batch // config.accum_freq, self.steps_per_epoch):
            if self.step >= self.max_steps:
                break
            lr = self.adjust_lr(self.step)
            chunk = [next(batches) for _ in range(config.accum_freq)]
            if self.trace.enabled:
                self.trace.write({"step": self.step + 1, "rank": self.env.rank,
                                  "text_ids": [int(t) for b in chunk for t in b.text_ids]})
            result = self.train_step(chunk)
            self.step += 1
            steps_done += 1
            window_samples += result.samples
            if not math.isfinite(result.loss):
                raise TrainingError(f"the loss became {result.loss} at step {self.step}; lower --lr or use another --precision")
            self.online.after_train_step(self.step, epoch + 1)
            if self.step % config.log_interval == 0 or self.step == self.max_steps:
                elapsed = time.perf_counter() - window_start
                self._report_step(epoch, lr, result, window_samples / elapsed if elapsed > 0 else None)
                window_start, window_samples = time.perf_counter(), 0
            if (self.valid_data is not None and config.valid_step_interval
                    and self.step % config.valid_step_interval == 0):
                self.validate(epoch)
                window_start, window_samples = time.perf_counter(), 0
            if config.save_step_frequency and self.step % config.save_step_frequency == 0:
                self.save(f"epoch_{epoch + 1}_{self.step}.pt", epoch + 1)
        return steps_done

    def _report_step(self, epoch: int, lr: float, result: StepResult, samples_per_s: float | None) -> None:
        config = self.config
        data: dict[str, Any] = {
            "step": self.step,
            "total_steps": self.max_steps,
            "epoch": epoch + 1,
            "loss": result.loss,
            "lr": lr,
            "samples_per_s": samples_per_s,
            "logit_scale": self.model.logit_scale.exp().item(),
        }
        if config.report_training_batch_acc:
            data["img2txt_acc"] = result.img2txt_acc
            data["txt2img_acc"] = result.txt2img_acc
        self.sink.emit("train_step", **data)
        acc = (f" | img2txt acc {result.img2txt_acc * 100:.2f} | txt2img acc {result.txt2img_acc * 100:.2f}"
               if config.report_training_batch_acc else "")
        log.info("step %d/%d | epoch %d | loss %.6f%s | lr %.3g | %.1f samples/s | logit scale %.3f",
                 self.step, self.max_steps, epoch + 1, result.loss, acc, lr,
                 data["samples_per_s"] or 0.0, data["logit_scale"])

    def save(self, filename: str | None, epoch: int) -> None:
        """Rank 0 writes ``filename`` (if given) and ``epoch_latest.pt``."""
        if not self.env.is_main:
            return
        for name in [n for n in (filename, "epoch_latest.pt") if n]:
            started = time.perf_counter()
            path = save_checkpoint(self.config.checkpoint_dir / name, self.model, self.optimizer,
                                   epoch, self.step, self.config.name,
                                   extra={"online_steps": self.online.online_steps})
            log.info("saved %s (epoch %d @ %d steps) in %.2fs", path, epoch, self.step, time.perf_counter() - started)
            self.sink.emit("checkpoint", path=str(path), epoch=epoch, step=self.step)
            if name != "epoch_latest.pt":
                self.result.checkpoints.append(str(path))

    def close(self) -> None:
        self.online.close()
        self.trace.close()
