"""The training loop: Chinese-CLIP fine-tuning under torchrun, with validation.

One optimizer step consumes ``accum_freq`` batches per rank (engine/step.py, the step runner that
the online learner and test-time adaptation call too).

Positions are counted in optimizer steps: epoch ``e`` holds ``steps_per_epoch`` steps, and a
checkpoint's ``step`` alone says where a resumed run continues (epoch ``step //
steps_per_epoch``, batch ``(step % steps_per_epoch) * accum_freq`` of it). Dropout is reseeded
from (seed, step, rank) before every step, so a resumed run repeats an uninterrupted one exactly
when the data order is deterministic (no augmentation).
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.trainer.model import create_model, image_resolution
from services.trainer.model.checkpoint import (
    CheckpointError,
    load_optimizer_state,
    load_weights,
    save_checkpoint,
)
from services.trainer.model.features import unwrap
from services.trainer.train.config import ConfigError, TrainConfig
from services.trainer.train.data import Batch, build_train_data, build_valid_data
from services.trainer.engine.distributed import DistEnv, init_distributed
from services.trainer.train.events import EventSink, JsonLinesSink, MultiSink, NullSink, TqdmSink
from services.trainer.engine.loss import contrastive_loss
from services.trainer.train.online import NoOnline, OnlineHook
from services.trainer.train.retrieval import recall_at_k
from services.trainer.train.schedule import warmup_cosine, warmup_cosine_lr
from services.trainer.engine.build import build_engine
from services.trainer.engine.step import StepResult, step_seed
from services.trainer.online.learner import OnlineLoginTimeout
from shared.muge import write_predictions
from shared.options import TrainOptions

log = logging.getLogger("cnclip.train")

class TrainingError(RuntimeError):
    """A run that cannot go on (the message says why)."""


@dataclass
class ValidationResult:
    step: int
    epoch: int
    loss: float
    img2txt_acc: float
    txt2img_acc: float
    r1: float
    r5: float
    r10: float
    mr: float
    texts: int
    images: int
    predictions: str | None = None

    def as_event(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["acc"] = {"img2txt": self.img2txt_acc, "txt2img": self.txt2img_acc}
        return data


@dataclass
class TrainResult:
    steps: int
    epochs: int
    checkpoints: list[str] = field(default_factory=list)
    validations: list[ValidationResult] = field(default_factory=list)


def freeze_vision_tower(model: nn.Module) -> None:
    clip = unwrap(model)
    for module in (clip.vision_model, clip.visual_projection):
        for param in module.parameters():
            param.requires_grad_(False)


class _TqdmHandler(logging.StreamHandler):
    """Writes log lines above a progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _setup_logging(config: TrainConfig, env: DistEnv, progress_bar: bool) -> logging.Handler | None:
    """Rank 0 logs INFO to stderr and {run}/out.log; other ranks only warnings."""
    logger = logging.getLogger("cnclip")
    logger.setLevel(logging.INFO if env.is_main else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    fmt = logging.Formatter(f"%(asctime)s | rank {env.rank} | %(levelname)s | %(message)s")
    console = (_TqdmHandler if progress_bar else logging.StreamHandler)(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if env.is_main:
        file_handler = logging.FileHandler(config.run_dir / "out.log", encoding="utf-8")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
        return file_handler
    return None


class Trainer:
    """Builds model, optimizer and data for a config and runs training with validation.

    The online hook receives this object: ``model`` (the ChineseCLIPModel), ``ddp_model``
    (what to call for a training forward), ``optimizer``, ``scaler``, ``autocast()``,
    ``config``, ``env``, ``device`` and ``sink``.
    """

    def __init__(self, config: TrainConfig, env: DistEnv, sink: EventSink | None = None,
                 online: OnlineHook | None = None):
        self.config = config
        self.env = env
        self.device = env.device
        self.sink: EventSink = sink or NullSink()
        self.result = TrainResult(steps=0, epochs=0)
        self._trace = None
        self._seed_everything(config.seed)

        self.model = create_model(
            config.vision_model, config.text_model,
            attn_implementation=config.attn_implementation,
            grad_checkpointing=config.grad_checkpointing,
            precision=config.precision,
        )
        checkpoint = self._load_resume_weights()
        if config.freeze_vision:
            freeze_vision_tower(self.model)
        self.engine = build_engine(self.model, config, env)
        self.optimizer = self.engine.optimizer

        resolution = image_resolution(config.vision_model)
        self.train_data = build_train_data(config, env, resolution)
        self.valid_data = build_valid_data(config, env, resolution) if config.val_data else None
        self.online = online or self._make_online(checkpoint)
        num_batches = self.train_data.num_batches
        if num_batches < config.accum_freq:
            raise ConfigError(
                f"an epoch has {num_batches} batches per rank but --accum-freq is {config.accum_freq}; "
                "lower --accum-freq or --batch-size"
            )
        self.steps_per_epoch = num_batches // config.accum_freq
        if config.max_steps is not None:
            self.max_steps = config.max_steps
            self.max_epochs = math.ceil(config.max_steps / self.steps_per_epoch)
        else:
            self.max_epochs = int(config.max_epochs)
            self.max_steps = self.steps_per_epoch * self.max_epochs
        self.adjust_lr = warmup_cosine(self.optimizer, config.lr, config.warmup, self.max_steps)

        self.step = 0
        if checkpoint is not None:
            self._restore_training_state(checkpoint)

    # ------------------------------------------------------------------------------ setup
    def _make_online(self, checkpoint: dict[str, Any] | None) -> OnlineHook:
        config = self.config
        if config.online == "off" or self.valid_data is None:
            return NoOnline()
        from services.trainer.online.factory import build_learner, crawl_identity

        return build_learner(
            config, self.env, self.engine.runner, image_resolution(config.vision_model), self.sink.emit,
            gallery=config.val_data, job_id=crawl_identity(config.job_id, config.name),
            online_steps=int((checkpoint or {}).get("online_steps") or 0) if not config.reset_data_offset else 0,
            trace=self._trace_online, replay_data=config.train_data,
            start_step=int((checkpoint or {}).get("step") or 0) if not config.reset_data_offset else 0,
            # Read when a pass starts, once the run's length is known.
            schedule=lambda step: warmup_cosine_lr(step, config.lr, config.warmup, self.max_steps))

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _resume_path(self) -> Path | None:
        if self.config.resume is not None:
            return Path(self.config.resume)
        latest = self.config.checkpoint_dir / "epoch_latest.pt"
        if latest.is_file():
            log.info("continuing this run from %s", latest)
            return latest
        return None

    def _load_resume_weights(self) -> dict[str, Any] | None:
        path = self._resume_path()
        if path is None:
            return None
        checkpoint = load_weights(self.model, path)
        log.info("loaded weights from %s (epoch %s, step %s)", path, checkpoint.get("epoch"), checkpoint.get("step"))
        return checkpoint

    def _restore_training_state(self, checkpoint: dict[str, Any]) -> None:
        config = self.config
        if not config.reset_optimizer:
            if checkpoint.get("optimizer"):
                load_optimizer_state(self.optimizer, self.model, checkpoint)
                log.info("optimizer state restored from %s", checkpoint["path"])
            else:
                log.warning("%s holds no optimizer state; starting with a fresh optimizer", checkpoint["path"])
        if not config.reset_data_offset:
            self.step = int(checkpoint.get("step") or 0)
            epoch, batch = divmod(self.step, self.steps_per_epoch)
            recorded = checkpoint.get("epoch")
            log.info("continuing at step %d: epoch %d, batch %d of %d", self.step, epoch + 1,
                     batch * config.accum_freq, self.train_data.num_batches)
            if recorded is not None and not (epoch <= int(recorded) <= epoch + 1):
                log.warning(
                    "the checkpoint says epoch %s but step %d is in epoch %d with this data and batch size; "
                    "pass --reset-data-offset if the data or the batch size changed", recorded, self.step, epoch + 1)

    def autocast(self):
        return self.engine.runner.autocast()

    def _to_device(self, batch: Batch):
        chunk = self.engine.runner.to_device(batch.images, batch.input_ids, batch.attention_mask)
        return chunk.images, chunk.input_ids, chunk.attention_mask

    def train_step(self, batches: list[Batch]) -> StepResult:
        """One optimizer step over ``batches`` (``accum_freq`` of them)."""
        torch.manual_seed(step_seed(self.config.seed, self.step, self.env.rank))
        return self.engine.runner([self.engine.runner.to_device(b.images, b.input_ids, b.attention_mask) for b in batches])

    def fit(self) -> TrainResult:
        config = self.config
        if self.step >= self.max_steps:
            log.info("nothing to train: step %d already reaches the %d steps asked for", self.step, self.max_steps)
            return self.result
        self._open_trace()
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
            self._trace_step(chunk)
            result = self.train_step(chunk)
            self.step += 1
            steps_done += 1
            window_samples += result.samples
            if not math.isfinite(result.loss):
                raise TrainingError(f"the loss became {result.loss} at step {self.step}; lower --lr or use another --precision")
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

    # ------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def _embed(self, images, input_ids, attention_mask):
        with self.autocast():
            return self.engine.contrastive(images, input_ids, attention_mask)

    def validate(self, epoch: int) -> ValidationResult:
        """Loss and in-batch accuracies (averaged over all validation pairs), and text-to-image
        R@1/5/10 and mean recall over the whole validation split (features of all ranks)."""
        assert self.valid_data is not None
        env = self.env
        self.sink.emit("phase", name="validation", step=self.step)
        log.info("validating (epoch %d @ %d steps)", epoch + 1, self.step)
        self.online.before_eval("valid", self.valid_data.rank_texts(), epoch=epoch + 1, train_step=self.step,
                                batches=self.valid_data.num_batches)
        sums = torch.zeros(4, dtype=torch.float64)  # loss * n, img2txt hits, txt2img hits, n
        image_features, text_features, image_ids, text_ids = [], [], [], []
        for index, batch in enumerate(self.valid_data.batches()):
            self.online.on_eval_batch("valid", index, batch)
            self.engine.contrastive.eval()
            image_f, text_f, logit_scale = self._embed(*self._to_device(batch))
            out = contrastive_loss(image_f, text_f, logit_scale, kind=self.config.loss,
                                   dsl_temperature=self.config.dsl_temperature, gather=False)
            n = image_f.shape[0]
            sums += torch.tensor([out.loss.item() * n, out.img2txt_acc.item() * n, out.txt2img_acc.item() * n, n],
                                 dtype=torch.float64)
            image_features.append(image_f.float().cpu())
            text_features.append(text_f.float().cpu())
            image_ids.extend(batch.image_ids)
            text_ids.extend(batch.text_ids)
        self.online.after_eval("valid")
        totals = env.all_reduce_sum(sums.to(self.device)).cpu()
        count = max(totals[3].item(), 1.0)
        local = (torch.cat(image_features) if image_features else torch.empty(0),
                 torch.cat(text_features) if text_features else torch.empty(0), image_ids, text_ids)
        gathered = env.gather_objects_to_main(local)
        metrics = None
        if gathered is not None:
            metrics = self._retrieval(gathered, epoch)
        metrics = env.broadcast_object(metrics)
        result = ValidationResult(
            step=self.step, epoch=epoch + 1, loss=totals[0].item() / count,
            img2txt_acc=totals[1].item() / count, txt2img_acc=totals[2].item() / count, **metrics,
        )
        self.result.validations.append(result)
        self.sink.emit("validation", **result.as_event())
        log.info("validation (epoch %d @ %d steps) | loss %.6f | img2txt acc %.2f | txt2img acc %.2f | "
                 "R@1 %.2f | R@5 %.2f | R@10 %.2f | mean recall %.2f | %d texts, %d images",
                 result.epoch, result.step, result.loss, result.img2txt_acc * 100, result.txt2img_acc * 100,
                 result.r1, result.r5, result.r10, result.mr, result.texts, result.images)
        self.engine.forward.train()
        return result

    def _retrieval(self, gathered: list[tuple], epoch: int) -> dict[str, Any]:
        """Deduplicate images by image_id and texts by text_id (a text paired with several
        images, and the padding that evens out the ranks, repeat them); a text's ground truth is
        every image it is paired with in the validation pairs."""
        image_rows: dict[Any, torch.Tensor] = {}
        text_rows: dict[Any, torch.Tensor] = {}
        truth: dict[Any, set[Any]] = {}
        for image_f, text_f, image_ids, text_ids in gathered:
            for row, (image_id, text_id) in enumerate(zip(image_ids, text_ids)):
                image_rows.setdefault(image_id, image_f[row])
                text_rows.setdefault(text_id, text_f[row])
                truth.setdefault(text_id, set()).add(image_id)
        order = lambda ids: sorted(ids, key=lambda i: (isinstance(i, str), i))  # noqa: E731
        text_order = order(text_rows)
        image_order = order(image_rows)
        retrieval = recall_at_k(
            torch.stack([text_rows[t] for t in text_order]),
            torch.stack([image_rows[i] for i in image_order]),
            image_order, [truth[t] for t in text_order],
        )
        path = write_predictions(self.config.run_dir / "validation" / f"epoch{epoch + 1}_step{self.step}.jsonl",
                                 zip(text_order, retrieval.top_image_ids))
        return {"r1": retrieval.r1, "r5": retrieval.r5, "r10": retrieval.r10, "mr": retrieval.mr,
                "texts": len(text_order), "images": len(image_order), "predictions": str(path)}

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, filename: str | None, epoch: int) -> None:
        """Rank 0 writes ``filename`` (if given) and ``epoch_latest.pt``."""
        if not self.env.is_main:
            return
        names = [n for n in (filename, "epoch_latest.pt") if n]
        for name in names:
            started = time.perf_counter()
            path = save_checkpoint(self.config.checkpoint_dir / name, self.model, self.optimizer,
                                   epoch, self.step, self.config.name,
                                   extra={"online_steps": getattr(self.online, "online_steps", 0)})
            log.info("saved %s (epoch %d @ %d steps) in %.2fs", path, epoch, self.step, time.perf_counter() - started)
            self.sink.emit("checkpoint", path=str(path), epoch=epoch, step=self.step)
            if name != "epoch_latest.pt":
                self.result.checkpoints.append(str(path))

    # ------------------------------------------------------------------------------ data-order audit
    def _open_trace(self) -> None:
        if self.config.trace_batches is not None:
            path = Path(f"{self.config.trace_batches}.rank{self.env.rank}.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._trace = open(path, "a", encoding="utf-8")

    def _trace_step(self, chunk: list[Batch]) -> None:
        if self._trace is not None:
            ids = [int(t) for b in chunk for t in b.text_ids]
            self._trace.write(json.dumps({"step": self.step + 1, "rank": self.env.rank, "text_ids": ids}) + "\n")
            self._trace.flush()

    def _trace_online(self, record: dict) -> None:
        if self._trace is not None:
            self._trace.write(json.dumps({"step": self.step, **record}) + "\n")
            self._trace.flush()

    def close(self) -> None:
        if hasattr(self.online, "close"):
            self.online.close()
        if self._trace is not None:
            self._trace.close()
            self._trace = None


def _make_sink(config: TrainConfig, env: DistEnv) -> EventSink:
    if not env.is_main:
        return NullSink()
    sinks: list[EventSink] = []
    if config.events is not None:
        sinks.append(JsonLinesSink(config.events, job_id=config.job_id))
    if config.progress:
        sinks.append(TqdmSink())
    if config.report_to == "tensorboard":
        from services.trainer.train.tensorboard import TensorBoardSink  # only runs that ask load it

        sinks.append(TensorBoardSink(config.run_dir / "tensorboard",
                                     hparams={name: getattr(config, name) for name in TrainOptions.model_fields}))
    return MultiSink(*sinks)


def run_training(config: TrainConfig) -> int:
    """Run ``config`` in this process (one rank of torchrun, or alone). Returns the exit code."""
    env = init_distributed(config.device)
    if env.is_main:
        config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    env.barrier()
    sink = _make_sink(config, env)
    progress_bar = any(isinstance(s, TqdmSink) and s.enabled for s in getattr(sink, "sinks", []))
    file_handler = _setup_logging(config, env, progress_bar)
    trainer: Trainer | None = None
    code = 0
    try:
        if env.is_main:
            (config.run_dir / "params.json").write_text(
                json.dumps({**config.to_json(), "world_size": env.world_size}, indent=1, sort_keys=True),
                encoding="utf-8")
        sink.emit("phase", name="setup")
        trainer = Trainer(config, env, sink)
        result = trainer.fit()
        last = result.validations[-1] if result.validations else None
        sink.emit("result", paths={"run_dir": str(config.run_dir), "checkpoints": result.checkpoints,
                                   "latest": str(config.checkpoint_dir / "epoch_latest.pt")},
                  metrics=last.as_event() if last else {}, steps=result.steps)
        log.info("finished at step %d", result.steps)
    except (CheckpointError, ConfigError, TrainingError, OnlineLoginTimeout) as exc:
        log.error("%s", exc)
        sink.emit("log", level="error", message=str(exc))
        code = 1
    finally:
        if trainer is not None:
            trainer.close()
        sink.close()
        if file_handler is not None:
            file_handler.close()
            logging.getLogger("cnclip").removeHandler(file_handler)
        env.close()
    return code
