"""Embeds a gallery with a checkpoint (or each of an ensemble's) and writes it as a gallery index.

The embedding is the prediction pipeline's own (``predict.pipeline.load_model`` and
``predict.features.image_features``): an index holds exactly the vectors a prediction with the
same checkpoint and options would rank, and costs the same to make.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from services.trainer.index.config import IndexConfig
from shared.gallery_index import (
    Manifest,
    Member,
    build_faiss,
    checkpoint_sha256,
    now,
    recall_at_10,
    remove_leftovers,
    write_index,
)

Emit = Callable[..., None]


class IndexBuildError(RuntimeError):
    """Bad input to an index build, reported as one clear line."""


def build_index(config: IndexConfig, emit: Emit) -> dict[str, Any]:
    from services.trainer.data.lmdb_read import GalleryDataset
    from services.trainer.data.transforms import image_transform
    from services.trainer.model import image_resolution
    from services.trainer.model.checkpoint import CheckpointError
    from services.trainer.engine.precision import resolve_device
    from services.trainer.predict.ensemble import EnsembleError, normalise_weights, stacked_features
    from services.trainer.predict.features import image_features
    from services.trainer.predict.pipeline import load_model

    started = time.perf_counter()
    target = config.target
    remove_leftovers(target)
    emit("phase", name="index:embed")
    checkpoints = config.checkpoints
    embedded: list[Any] = []  # each checkpoint's Features, in order
    reads: list[dict[str, Any]] = []
    try:
        weights = normalise_weights(config.weights, len(checkpoints)) if config.members else None
        device = resolve_device(config.device)
        gallery = GalleryDataset(config.image_data, image_transform(image_resolution(config.vision_model)))
        embed_started = time.perf_counter()
        for number, checkpoint in enumerate(checkpoints):
            model, read = load_model(checkpoint, config, device)
            last = [0.0]
            who = f"member {number + 1}/{len(checkpoints)}: " if config.members else ""

            def progress(done: int, total: int) -> None:
                if time.monotonic() - last[0] >= 2 or done == total:
                    last[0] = time.monotonic()
                    emit("log", level="info", message=f"{who}embedded {done}/{total} images")

            features = image_features(model, gallery, device=device, batch_size=config.img_batch_size,
                                      num_workers=config.num_workers, precision=config.precision,
                                      progress=progress)
            del model
            if embedded and list(features.ids) != list(embedded[0].ids):
                raise IndexBuildError(f"member {checkpoint} read the gallery's images in another order")
            embedded.append(features)
            reads.append(read)
        embed_s = time.perf_counter() - embed_started
    except CheckpointError as exc:
        raise IndexBuildError(str(exc)) from exc
    except EnsembleError as exc:
        raise IndexBuildError(str(exc)) from exc
    except (FileNotFoundError, KeyError, ValueError, FloatingPointError) as exc:
        raise IndexBuildError(f"{type(exc).__name__}: {exc}") from exc
    emit("phase", name=f"index:{config.index_kind}")
    ids = embedded[0].ids
    if config.members:
        vectors = stacked_features([f.features.numpy() for f in embedded])
        members = [(c, r, int(f.features.shape[1])) for c, r, f in zip(checkpoints, reads, embedded)]
        written = write_features_index(
            target, ids, vectors, checkpoint=None, read=None, options=config, gallery=config.image_data,
            kind=config.index_kind, params=config.model_dump(), members=members, weights=weights)
    else:
        written = write_features_index(
            target, ids, embedded[0].features, checkpoint=config.resume, read=reads[0], options=config,
            gallery=config.image_data, kind=config.index_kind, params=config.model_dump())
    manifest, params, recall, build_s = written
    result = {
        "index": str(target), "name": config.name, "count": manifest.count, "dim": manifest.dim,
        "index_kind": config.index_kind, "params": params, "recall_at_10": recall,
        "embed_s": round(embed_s, 3), "images_per_s": round(manifest.count * len(checkpoints) / max(embed_s, 1e-9), 1),
        "faiss_build_s": round(build_s, 3), "elapsed_s": round(time.perf_counter() - started, 3),
    }
    if config.members:
        result.update(members=[m.checkpoint for m in manifest.members], weights=manifest.weights)
    emit("result", paths={"index": str(target)}, metrics={
        k: result[k] for k in ("count", "recall_at_10", "images_per_s", "embed_s", "faiss_build_s")})
    return result


def write_features_index(target: Path, ids: list[Any], features, *, checkpoint: str | Path | None,
                         read: dict[str, Any] | None, options, gallery: str | Path, kind: str = "flat",
                         params: dict[str, Any] | None = None,
                         members: list[tuple[str | Path, dict[str, Any], int]] | None = None,
                         weights: list[float] | None = None) -> tuple[Manifest, dict[str, Any], float, float]:
    """Writes gallery ``features`` (float32, L2-normalised rows; an ensemble's members' side by
    side) as the index at ``target``. One checkpoint: ``checkpoint`` and what loading it
    ``read``; an ensemble: ``members`` as (checkpoint, read, columns) and their normalised
    ``weights``. Returns (manifest, the FAISS parameters used, recall@10 against exact, FAISS
    build seconds). ``options`` carries the model options (towers, context length, precision)."""
    # FAISS indexes the stored float16 values (widened): the index and the embeddings file
    # then agree exactly, whichever of them a reader searches or scores with.
    array = features.numpy() if hasattr(features, "numpy") else np.asarray(features)
    vectors = array.astype(np.float16).astype(np.float32)
    remove_leftovers(Path(target))
    started = time.perf_counter()
    index, used = build_faiss(vectors, kind, params or {})
    build_s = time.perf_counter() - started
    recall = 1.0 if kind == "flat" else recall_at_10(index, vectors)
    if members:
        who: dict[str, Any] = {
            "checkpoint": None, "checkpoint_sha256": None, "weights": list(weights or []),
            "members": [Member(checkpoint=str(Path(r["path"]).resolve()), checkpoint_sha256=checkpoint_sha256(c),
                               dim=dim) for c, r, dim in members]}
    else:
        who = {"checkpoint": str(Path(read["path"]).resolve()), "checkpoint_sha256": checkpoint_sha256(checkpoint),
               "epoch": read.get("epoch"), "step": read.get("step")}
    manifest = Manifest(
        **who, vision_model=options.vision_model, text_model=options.text_model,
        context_length=options.context_length, gallery=str(Path(gallery).resolve()),
        count=len(ids), dim=int(vectors.shape[1]), created=now(), index_kind=kind,
        params=used, recall_at_10=recall, precision=options.precision)
    write_index(target, ids, vectors, manifest, index)
    return manifest, used, recall, build_s
