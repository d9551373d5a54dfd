"""The three prediction modes behind `cnclip predict`: single, ensemble, ensemble-last."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from services.trainer.predict.ensemble import (
    EnsembleError,
    SavedScores,
    fit_weights,
    fuse,
    ids_of,
    load_saved_scores,
    member_scores_path,
    normalise_weights,
    read_manifest,
    score_key,
    write_manifest,
    write_sidecar,
)
from shared.muge import EvaluationError, read_ground_truth, write_predictions
from services.trainer.engine.precision import resolve_device
from services.trainer.predict.config import PredictConfig
from services.trainer.predict.pipeline import (
    encode,
    ground_truth_of,
    load_model,
    metrics_of,
    rank,
    score_member,
    score_identity,
)
from services.trainer.predict.topk import ScoreMatrixWriter

Emit = Callable[..., None]


class PredictError(RuntimeError):
    """Bad input to a prediction run, reported as one clear line."""


def predict(config: PredictConfig, emit: Emit) -> dict[str, Any]:
    from services.trainer.model.checkpoint import CheckpointError

    started = time.perf_counter()
    emit("phase", name=f"predict:{config.mode}")
    try:
        if config.mode == "single":
            result = _single(config, emit)
        elif config.mode == "ensemble":
            result = _ensemble(config, emit)
        else:
            result = _ensemble_last(config, emit)
    except (EnsembleError, EvaluationError, CheckpointError) as exc:
        raise PredictError(str(exc)) from exc
    except (FileNotFoundError, KeyError, ValueError, FloatingPointError) as exc:
        raise PredictError(f"{type(exc).__name__}: {exc}") from exc
    result["elapsed_s"] = round(time.perf_counter() - started, 3)
    emit("result", paths=[result["output"], *([result["metrics_file"]] if result.get("metrics_file") else []),
                          *([result["index"]] if result.get("index") else [])],
         metrics=result.get("metrics"))
    return result


def _finish(
    config: PredictConfig, text_ids: list[Any], ranked: list[list[Any]], text_data: str | None, emit: Emit
) -> dict[str, Any]:
    """Write the predictions and, with ground truth, the metrics."""
    output = write_predictions(config.output, zip(text_ids, ranked))
    result: dict[str, Any] = {"mode": config.mode, "output": str(output), "queries": len(text_ids)}
    reference = ground_truth_of(text_data, emit) if text_data and Path(text_data).is_file() else None
    metrics = metrics_of(text_ids, ranked, reference, config.top_k, emit)
    if metrics is not None:
        metrics_file = Path(str(output) + ".metrics.json")
        metrics_file.write_text(json.dumps(metrics) + "\n", encoding="utf-8")
        result.update(metrics=metrics, metrics_file=str(metrics_file))
    return result


def _single(config: PredictConfig, emit: Emit) -> dict[str, Any]:
    device = resolve_device(config.device)
    model, checkpoint = load_model(config.resume, config, device)
    adapted = None
    if config.online != "off":
        from services.trainer.online.adapt import adapt

        adapted = adapt(model, checkpoint, config, config, device, emit)
    encoded = encode(model, config.image_data, config.text_data, config, device, emit)
    del model
    writer = scores_path = None
    if config.save_scores:
        key = score_key(config.resume, config.image_data, config.text_data, score_identity(config, device))
        scores_path = member_scores_path(config.score_dir, config.resume, Path(config.text_data).stem, key)
        writer = ScoreMatrixWriter(scores_path, (len(encoded.texts.ids), len(encoded.images.ids)), config.scores_dtype)
    try:
        top = rank(encoded, config, device, writer)
        if writer is not None:
            write_sidecar(scores_path, encoded.texts.ids, encoded.images.ids, {
                "checkpoint": str(Path(config.resume).resolve()), "key": key,
                "options": score_identity(config, device),
            })
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    ranked = ids_of(top, encoded.images.ids)
    result = _finish(config, encoded.texts.ids, ranked, config.text_data, emit)
    if scores_path is not None:
        result["scores"] = str(scores_path)
    if adapted is not None:
        result["adapted_checkpoint"] = str(adapted)
    if config.save_index:
        result["index"] = _save_index(config, encoded, adapted, checkpoint, emit)
    return result


def _save_index(config: PredictConfig, encoded, adapted: Path | None, read: dict[str, Any], emit: Emit) -> str:
    """The gallery embeddings just computed, kept as a searchable index (no second embedding)."""
    from services.trainer.index.build import write_features_index
    from shared.layout import index_dir

    emit("phase", name="index:flat")
    target = index_dir(config.experiments, config.save_index)
    checkpoint = adapted or config.resume
    if adapted is not None:
        read = {**read, "path": str(adapted)}
    write_features_index(target, encoded.images.ids, encoded.images.features, checkpoint=checkpoint, read=read,
                         options=config, gallery=config.image_data)
    emit("log", level="info", message=f"gallery index saved to {target}")
    return str(target)


def _member_metrics(saved: SavedScores, reference: dict | None, top_k: int) -> dict[str, float] | None:
    if reference is None:
        return None
    text_ids, ranked, _ = fuse([saved], [1.0], min(max(top_k, 10), len(saved.image_ids)))
    return metrics_of(text_ids, ranked, reference, 10)


def _online_members(config: PredictConfig, emit: Emit) -> list[str]:
    """The members' checkpoints, each adapted to the test queries first when online."""
    if config.online == "off":
        return list(config.members)
    from services.trainer.online.adapt import adapt

    device = resolve_device(config.device)
    adapted = []
    for i, checkpoint in enumerate(config.members):
        model, read = load_model(checkpoint, config, device)
        adapted.append(str(adapt(model, read, config, config, device, emit, member=i)))
        del model
    return adapted


def _ensemble(config: PredictConfig, emit: Emit) -> dict[str, Any]:
    n = len(config.members)
    checkpoints = _online_members(config, emit)
    fit = None
    if config.fit_weights_on:
        emit("phase", name="ensemble:fit-weights")
        reference = read_ground_truth(config.fit_weights_on)
        valid = []
        for i, checkpoint in enumerate(checkpoints):
            saved, _, _ = score_member(checkpoint, config.fit_images, config.fit_weights_on, config,
                                       config.score_dir, emit, member=i)
            valid.append(saved)
        fit = fit_weights(
            valid, reference, query_chunk=config.query_chunk, gallery_chunk=config.gallery_chunk,
            on_step=lambda step: emit("ensemble", progress=f"fit evaluation {step['evaluation']}",
                                      weights=step["weights"], metrics=step["metrics"]),
        )
        emit("ensemble", progress="fitted", weights=fit.weights, metrics=fit.metrics,
             equal_weights=fit.equal_weights, equal_metrics=fit.equal_metrics)
        weights = fit.weights
    else:
        weights = normalise_weights(config.weights, n)

    emit("phase", name="ensemble:score-members")
    reference = ground_truth_of(config.text_data, emit)
    members: list[SavedScores] = []
    reused: list[bool] = []
    member_metrics: list[dict[str, float] | None] = []
    for i, checkpoint in enumerate(checkpoints):
        saved, _, was_reused = score_member(checkpoint, config.image_data, config.text_data, config,
                                            config.score_dir, emit, member=i)
        members.append(saved)
        reused.append(was_reused)
        member_metrics.append(_member_metrics(saved, reference, config.top_k))
        emit("ensemble", member=i, checkpoint=str(checkpoint), weight=weights[i],
             progress=f"{i + 1}/{n}", metrics=member_metrics[-1])

    emit("phase", name="ensemble:fuse")
    text_ids, ranked, _ = fuse(members, weights, config.top_k, query_chunk=config.query_chunk,
                               gallery_chunk=config.gallery_chunk)
    result = _finish(config, text_ids, ranked, config.text_data, emit)
    result["members"] = [
        {"checkpoint": str(c), "scores": str(m.path), "weight": w, "reused": r, "metrics": mm}
        for c, m, w, r, mm in zip(checkpoints, members, weights, reused, member_metrics)
    ]
    result["weights"] = weights
    if fit is not None:
        result["fit"] = fit.as_dict()
    manifest = write_manifest(config.score_dir, {
        "members": result["members"],
        "weights": weights,
        "fit": result.get("fit"),
        "text_data": str(Path(config.text_data).resolve()),
        "image_data": str(Path(config.image_data).resolve()),
        "top_k": config.top_k,
        "output": result["output"],
    })
    result["manifest"] = str(manifest)
    emit("ensemble", progress="done", weights=weights, metrics=result.get("metrics"))
    return result


def _ensemble_last(config: PredictConfig, emit: Emit) -> dict[str, Any]:
    """Fuse saved matrices only: no checkpoint is loaded, no image is decoded."""
    text_data = config.text_data
    if config.members:
        paths = list(config.members)
        weights = normalise_weights(config.weights, len(paths))
    else:
        manifest = read_manifest(config.score_dir)
        paths = [m["scores"] for m in manifest["members"]]
        weights = normalise_weights(config.weights or manifest.get("weights"), len(paths))
        text_data = text_data or manifest.get("text_data")
    members = [load_saved_scores(p) for p in paths]
    for i, (saved, weight) in enumerate(zip(members, weights)):
        emit("ensemble", member=i, scores=str(saved.path), weight=weight, progress=f"{i + 1}/{len(members)}")
    text_ids, ranked, _ = fuse(members, weights, config.top_k, query_chunk=config.query_chunk,
                               gallery_chunk=config.gallery_chunk)
    result = _finish(config, text_ids, ranked, text_data, emit)
    result["members"] = [{"scores": str(m.path), "weight": w} for m, w in zip(members, weights)]
    result["weights"] = weights
    emit("ensemble", progress="done", weights=weights, metrics=result.get("metrics"))
    return result
