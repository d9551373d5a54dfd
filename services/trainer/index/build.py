"""Embeds a gallery with a checkpoint and writes it as a gallery index.

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
    from services.trainer.predict.features import image_features
    from services.trainer.predict.pipeline import load_model

    started = time.perf_counter()
    target = config.target
    remove_leftovers(target)
    emit("phase", name="index:embed")
    try:
        device = resolve_device(config.device)
        model, read = load_model(config.resume, config, device)
        gallery = GalleryDataset(config.image_data, image_transform(image_resolution(config.vision_model)))
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= 2 or done == total:
                last[0] = time.monotonic()
                emit("log", level="info", message=f"embedded {done}/{total} images")

        embed_started = time.perf_counter()
        features = image_features(model, gallery, device=device, batch_size=config.img_batch_size,
                                  num_workers=config.num_workers, precision=config.precision,
                                  progress=progress)
        embed_s = time.perf_counter() - embed_started
    except CheckpointError as exc:
        raise IndexBuildError(str(exc)) from exc
    except (FileNotFoundError, KeyError, ValueError, FloatingPointError) as exc:
        raise IndexBuildError(f"{type(exc).__name__}: {exc}") from exc
    del model
    emit("phase", name=f"index:{config.index_kind}")
    written = write_features_index(
        target, features.ids, features.features, checkpoint=config.resume, read=read, options=config,
        gallery=config.image_data, kind=config.index_kind, params=config.model_dump())
    manifest, params, recall, build_s = written
    result = {
        "index": str(target), "name": config.name, "count": manifest.count, "dim": manifest.dim,
        "index_kind": config.index_kind, "params": params, "recall_at_10": recall,
        "embed_s": round(embed_s, 3), "images_per_s": round(manifest.count / max(embed_s, 1e-9), 1),
        "faiss_build_s": round(build_s, 3), "elapsed_s": round(time.perf_counter() - started, 3),
    }
    emit("result", paths={"index": str(target)}, metrics={
        k: result[k] for k in ("count", "recall_at_10", "images_per_s", "embed_s", "faiss_build_s")})
    return result


def write_features_index(target: Path, ids: list[Any], features, *, checkpoint: str | Path, read: dict[str, Any],
                         options, gallery: str | Path, kind: str = "flat",
                         params: dict[str, Any] | None = None) -> tuple[Manifest, dict[str, Any], float, float]:
    """Writes gallery ``features`` (a float32 tensor, L2-normalised rows) as the index at
    ``target``. Returns (manifest, the FAISS parameters used, recall@10 against exact, FAISS
    build seconds). ``options`` carries the model options (towers, context length, precision)."""
    # FAISS indexes the stored float16 values (widened): the index and the embeddings file
    # then agree exactly, whichever of them a reader searches or scores with.
    vectors = features.numpy().astype(np.float16).astype(np.float32)
    remove_leftovers(Path(target))
    started = time.perf_counter()
    index, used = build_faiss(vectors, kind, params or {})
    build_s = time.perf_counter() - started
    recall = 1.0 if kind == "flat" else recall_at_10(index, vectors)
    manifest = Manifest(
        checkpoint=str(Path(read["path"]).resolve()), checkpoint_sha256=checkpoint_sha256(checkpoint),
        vision_model=options.vision_model, text_model=options.text_model,
        context_length=options.context_length, gallery=str(Path(gallery).resolve()),
        count=len(ids), dim=int(vectors.shape[1]), created=now(), index_kind=kind,
        params=used, recall_at_10=recall, precision=options.precision,
        epoch=read.get("epoch"), step=read.get("step"))
    write_index(target, ids, vectors, manifest, index)
    return manifest, used, recall, build_s
