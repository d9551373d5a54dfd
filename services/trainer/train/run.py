"""A training run's composition root: the process group, logging, event sinks, the run's parts
(train/setup.py), the online hook (built here, from those parts, and injected into the
``Trainer``), then ``fit``. The only module of train/ that knows online/ exists."""
from __future__ import annotations

import json
import logging
import sys

from services.trainer.engine.distributed import DistEnv, init_distributed
from services.trainer.model import image_resolution
from services.trainer.model.checkpoint import CheckpointError
from services.trainer.online.factory import build_learner, crawl_identity
from services.trainer.online.learner import OnlineLoginTimeout
from services.trainer.train.config import ConfigError, TrainConfig
from services.trainer.train.events import EventSink, JsonLinesSink, MultiSink, NullSink, TqdmSink
from services.trainer.train.loop import Trainer, TrainingError
from services.trainer.train.online import NoOnline, OnlineHook
from services.trainer.train.setup import RunSetup, prepare_run
from services.trainer.train.trace import BatchTrace
from services.trainer.train.validation import event_data
from shared.options import TrainOptions

log = logging.getLogger("cnclip.train")


def build_online(setup: RunSetup, sink: EventSink, trace: BatchTrace) -> OnlineHook:
    """The run's online hook: the learner of ``--online`` over the validation split, or
    ``NoOnline`` when it is off or there is nothing to validate on."""
    config = setup.config
    if config.online == "off" or setup.valid_data is None:
        return NoOnline()
    return build_learner(
        config, setup.env, setup.engine.runner, image_resolution(config.vision_model), sink.emit,
        gallery=config.val_data, job_id=crawl_identity(config.job_id, config.name),
        online_steps=setup.start_online_steps, trace=trace.write, replay_data=config.train_data,
        start_step=setup.start_step, schedule=setup.lr_at)


def build_trainer(config: TrainConfig, env: DistEnv, sink: EventSink | None = None,
                  online: OnlineHook | None = None) -> Trainer:
    """A ``Trainer`` for ``config``; ``online`` replaces the hook ``config`` asks for."""
    setup = prepare_run(config, env)
    sink = sink or NullSink()
    trace = BatchTrace(config.trace_batches, env.rank)
    hook = online if online is not None else build_online(setup, sink, trace)
    return Trainer(setup, sink, hook, trace)


class _TqdmHandler(logging.StreamHandler):
    """Writes log lines above a progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def setup_logging(config: TrainConfig, env: DistEnv, progress_bar: bool) -> logging.Handler | None:
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


def make_sink(config: TrainConfig, env: DistEnv) -> EventSink:
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
    sink = make_sink(config, env)
    progress_bar = any(isinstance(s, TqdmSink) and s.enabled for s in getattr(sink, "sinks", []))
    file_handler = setup_logging(config, env, progress_bar)
    trainer: Trainer | None = None
    code = 0
    try:
        if env.is_main:
            (config.run_dir / "params.json").write_text(
                json.dumps({**config.to_json(), "world_size": env.world_size}, indent=1, sort_keys=True),
                encoding="utf-8")
        sink.emit("phase", name="setup")
        trainer = build_trainer(config, env, sink)
        result = trainer.fit()
        last = result.validations[-1] if result.validations else None
        sink.emit("result", paths={"run_dir": str(config.run_dir), "checkpoints": result.checkpoints,
                                   "latest": str(config.checkpoint_dir / "epoch_latest.pt")},
                  metrics=event_data(last) if last else {}, steps=result.steps)
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
