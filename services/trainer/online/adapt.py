"""Test-time online learning: before a checkpoint scores the test gallery, ``online_max_epochs``
passes of crawl-and-step over the test queries (each use of a query learns from its next
agreeing crawled picture; with the prototype's options pass ``e`` uses picture ``e mod K``),
offline pairs replayed when ``online_replay_data`` is given, the change kept at the share
``online_interpolate`` (WiSE-FT), then the adapted model is saved as
``{experiments}/{name}/epoch{E}_online_{N}.pt`` in the Chinese-CLIP format and used to predict."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from services.trainer.data.texts import TextsDataset
from services.trainer.model import image_resolution
from services.trainer.model.checkpoint import save_checkpoint
from services.trainer.online.factory import build_learner, crawl_identity
from services.trainer.engine.precision import half_weights
from services.trainer.engine.build import build_engine
from services.trainer.engine.distributed import DistEnv
from shared.messages import Checkpoint, EventPayload, Phase
from shared.options import PredictOptions, PredictRunOptions

log = logging.getLogger("cnclip.online")


def _send(emit: Callable[..., None], payload: EventPayload) -> None:
    emit(payload.type, **payload.model_dump(exclude_unset=True))


def adapted_name(run: PredictRunOptions, epoch: int, epochs: int, member: int | None) -> Path:
    stem = f"epoch{epoch}_online_{epochs}.pt"
    if member is not None:
        stem = f"member{member}-{stem}"
    folder = run.name or run.job_id or "online"
    return Path(run.experiments) / folder / stem


@torch.no_grad()
def interpolate(model: torch.nn.Module, start: Mapping[str, torch.Tensor], share: float) -> None:
    """Keeps ``share`` of the change adaptation made: w = w0 + share (w - w0) (WiSE-FT's
    interpolation; floating-point tensors only, counters stay as they are)."""
    if share >= 1.0:
        return
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            value.copy_(start[name] + share * (value - start[name]))


def adapt(model: torch.nn.Module, checkpoint: Mapping[str, Any], config: PredictOptions, run: PredictRunOptions,
          device: torch.device, emit: Callable[..., None], *, member: int | None = None) -> Path:
    """Adapt ``model`` (on ``device``, loaded from ``checkpoint``: its path, epoch and step as
    ``pipeline.load_model`` returns them) in place and save it under ``run``'s experiments
    folder. Returns the adapted checkpoint's path."""
    env = DistEnv.alone(device)
    model.train()
    engine = build_engine(model, config, env)
    k = config.online_images
    # Each ensemble member asks for the same queries: its requests must not be taken for another's.
    identity = crawl_identity(run.job_id, run.name) + (f"-member{member}" if member is not None else "")
    learner = build_learner(config, env, engine.runner, image_resolution(config.vision_model), emit,
                            gallery=config.image_data, job_id=identity,
                            image_index=lambda pass_index: pass_index % k,
                            replay_data=config.online_replay_data)
    initial = {name: value.detach().clone() for name, value in model.state_dict().items()}
    texts = TextsDataset(config.text_data, config.context_length)
    rows = [texts[i] for i in range(len(texts))]
    queries = [r[1] for r in rows]
    size = config.text_batch_size
    trained_epoch, trained_step = int(checkpoint.get("epoch") or 0), int(checkpoint.get("step") or 0)
    _send(emit, Phase(name="predict:online" + (f":member{member}" if member is not None else "")))
    try:
        for epoch in range(config.online_max_epochs):
            learner.before_eval("test", queries, epoch=epoch + 1)
            for index, start in enumerate(range(0, len(rows), size)):
                chunk = rows[start:start + size]
                learner.learn("test", index, [r[1] for r in chunk], torch.stack([r[2] for r in chunk]),
                              torch.stack([r[3] for r in chunk]))
            learner.after_eval("test")
    finally:
        learner.close()
    interpolate(model, initial, config.online_interpolate)
    model.eval()
    path = adapted_name(run, trained_epoch, config.online_max_epochs, member)
    save_checkpoint(path, model, engine.optimizer, trained_epoch, trained_step,
                    path.parent.name, extra={"online_steps": learner.online_steps,
                                             "adapted_from": str(Path(checkpoint["path"]).resolve())})
    if half_weights(config.precision):
        model.float()  # prediction runs fp32 weights under autocast
    _send(emit, Checkpoint(path=str(path), epoch=trained_epoch, step=learner.online_steps))
    log.info("test-time online learning: %d steps over %d passes; saved %s", learner.online_steps,
             config.online_max_epochs, path)
    return path
