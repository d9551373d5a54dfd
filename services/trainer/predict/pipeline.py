"""Prediction end to end: load a checkpoint, encode a gallery and its queries, rank, and keep
the score matrix of an ensemble member (reused when nothing it depends on has changed)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from services.trainer.predict.ensemble import (
    SavedScores,
    load_saved_scores,
    member_scores_path,
    saved_scores_complete,
    score_key,
    write_sidecar,
)
from shared.muge import GroundTruthError, has_ground_truth, read_ground_truth, recall_metrics
from services.trainer.predict.features import Features, image_features, text_features
from services.trainer.engine.precision import autocast_dtype, resolve_device
from services.trainer.predict.topk import ScoreMatrixWriter, TopK, chunked_topk
from shared.options import PredictOptions

Emit = Callable[..., None]


def _no_events(type: str, **data: Any) -> None:
    pass


def score_identity(options: PredictOptions, device: torch.device) -> dict[str, Any]:
    """What, besides checkpoint and data, changes a member's scores."""
    dtype = autocast_dtype(options.precision, device)
    return {
        "vision_model": options.vision_model,
        "text_model": options.text_model,
        "context_length": options.context_length,
        "compute": str(dtype or torch.float32),
        "scores_dtype": options.scores_dtype,
    }


@dataclass
class Encoded:
    texts: Features
    images: Features


def load_model(checkpoint: str | Path, options: PredictOptions,
               device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model in eval mode on ``device``, and where the checkpoint came from (its path, epoch
    and step: read once here, not again by whoever needs them; not its weights, which would
    stay in memory beside the model's)."""
    from services.trainer.model import create_model
    from services.trainer.model.checkpoint import load_weights

    model = create_model(
        options.vision_model, options.text_model,
        attn_implementation=options.attn_implementation, precision=options.precision,
    )
    read = load_weights(model, checkpoint)
    return model.to(device).eval(), {key: read[key] for key in ("path", "epoch", "step")}


def encode(
    model: torch.nn.Module,
    image_data: str | Path,
    text_data: str | Path,
    options: PredictOptions,
    device: torch.device,
    emit: Emit = _no_events,
) -> Encoded:
    from services.trainer.data.lmdb_read import GalleryDataset
    from services.trainer.data.texts import TextsDataset
    from services.trainer.data.transforms import image_transform
    from services.trainer.model import image_resolution

    gallery = GalleryDataset(image_data, image_transform(image_resolution(options.vision_model)))
    texts = TextsDataset(text_data, options.context_length)
    started = time.perf_counter()
    images = image_features(model, gallery, device=device, batch_size=options.img_batch_size,
                            num_workers=options.num_workers, precision=options.precision)
    queries = text_features(model, texts, device=device, batch_size=options.text_batch_size,
                            num_workers=options.num_workers, precision=options.precision)
    emit("log", level="info", message=(
        f"encoded {len(images.ids)} images and {len(queries.ids)} texts in {time.perf_counter() - started:.1f}s"
    ))
    return Encoded(queries, images)


def rank(
    encoded: Encoded,
    options: PredictOptions,
    device: torch.device,
    writer: ScoreMatrixWriter | None = None,
) -> TopK:
    return chunked_topk(
        encoded.texts.features, encoded.images.features, options.top_k,
        query_chunk=options.query_chunk, gallery_chunk=options.gallery_chunk,
        device=device, sink=writer,
    )


def ground_truth_of(text_data: str | Path, emit: Emit = _no_events) -> dict[Any, list[Any]] | None:
    """The file's ground truth when its queries carry image_ids, else None (a test set)."""
    if not has_ground_truth(text_data):
        return None
    try:
        return read_ground_truth(text_data)
    except GroundTruthError as exc:
        emit("log", level="warning", message=f"no metrics: {exc}")
        return None


def metrics_of(
    text_ids: list[Any], ranked: list[list[Any]], reference: dict[Any, list[Any]] | None, top_k: int,
    emit: Emit = _no_events,
) -> dict[str, float] | None:
    """MUGE metrics of in-memory predictions (they need the first 10 images of every query)."""
    if reference is None:
        return None
    if top_k < 10:
        emit("log", level="warning", message=f"no metrics: MUGE recall needs --top-k 10 or more, got {top_k}")
        return None
    predictions = {tid: ids[:10] for tid, ids in zip(text_ids, ranked)}
    missing = [t for t in reference if t not in predictions]
    if missing:
        emit("log", level="warning", message=f"no metrics: {len(missing)} ground-truth texts were not predicted")
        return None
    return recall_metrics(reference, predictions)


def score_member(
    checkpoint: str | Path,
    image_data: str | Path,
    text_data: str | Path,
    options: PredictOptions,
    score_dir: str | Path,
    emit: Emit = _no_events,
    member: int | None = None,
) -> tuple[SavedScores, TopK | None, bool]:
    """The member's saved score matrix for these data, computed only when not already saved.

    Returns (saved scores, the member's own top-k if it was just computed, reused?)."""
    device = resolve_device(options.device)
    key = score_key(checkpoint, image_data, text_data, score_identity(options, device))
    path = member_scores_path(score_dir, checkpoint, Path(text_data).stem, key)
    if saved_scores_complete(path):
        emit("ensemble", member=member, checkpoint=str(checkpoint), progress="reused", scores=str(path))
        return load_saved_scores(path), None, True
    emit("ensemble", member=member, checkpoint=str(checkpoint), progress="encoding", scores=str(path))
    model, _ = load_model(checkpoint, options, device)
    encoded = encode(model, image_data, text_data, options, device, emit)
    del model
    writer = ScoreMatrixWriter(path, (len(encoded.texts.ids), len(encoded.images.ids)), options.scores_dtype)
    try:
        top = rank(encoded, options, device, writer)
        write_sidecar(path, encoded.texts.ids, encoded.images.ids, {
            "checkpoint": str(Path(checkpoint).resolve()),
            "image_data": str(Path(image_data).resolve()),
            "text_data": str(Path(text_data).resolve()),
            "key": key,
            "options": score_identity(options, device),
        })
        writer.close()
    except BaseException:
        writer.abort()
        raise
    emit("ensemble", member=member, checkpoint=str(checkpoint), progress="scored", scores=str(path))
    return load_saved_scores(path), top, False
