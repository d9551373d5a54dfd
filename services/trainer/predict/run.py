"""The three prediction modes behind `cnclip predict`: single, ensemble, ensemble-last."""
from __future__ import annotations

import argparse
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
from services.trainer.predict.pipeline import (
    PredictOptions,
    encode,
    ground_truth_of,
    load_model,
    metrics_of,
    rank,
    score_member,
)
from services.trainer.predict.topk import ScoreMatrixWriter

Emit = Callable[..., None]


class PredictError(RuntimeError):
    """Bad input to a prediction run, reported as one clear line."""


def options_from(args: argparse.Namespace) -> PredictOptions:
    return PredictOptions(
        vision_model=args.vision_model,
        text_model=args.text_model,
        context_length=args.context_length,
        precision=args.precision,
        attn_implementation=args.attn_implementation,
        device=args.device,
        img_batch_size=args.img_batch_size,
        text_batch_size=args.text_batch_size,
        num_workers=args.num_workers,
        top_k=args.top_k,
        query_chunk=args.query_chunk,
        gallery_chunk=args.gallery_chunk,
        scores_dtype=args.scores_dtype,
    )


def predict(args: argparse.Namespace, emit: Emit) -> dict[str, Any]:
    from services.trainer.model.checkpoint import CheckpointError

    started = time.perf_counter()
    emit("phase", name=f"predict:{args.mode}")
    try:
        if args.mode == "single":
            result = _single(args, emit)
        elif args.mode == "ensemble":
            result = _ensemble(args, emit)
        else:
            result = _ensemble_last(args, emit)
    except (EnsembleError, EvaluationError, CheckpointError) as exc:
        raise PredictError(str(exc)) from exc
    except (FileNotFoundError, KeyError, ValueError, FloatingPointError) as exc:
        raise PredictError(f"{type(exc).__name__}: {exc}") from exc
    result["elapsed_s"] = round(time.perf_counter() - started, 3)
    emit("result", paths=[result["output"], *([result["metrics_file"]] if result.get("metrics_file") else [])],
         metrics=result.get("metrics"))
    return result


def _finish(
    args: argparse.Namespace, text_ids: list[Any], ranked: list[list[Any]], text_data: str | None, emit: Emit
) -> dict[str, Any]:
    """Write the predictions and, with ground truth, the metrics."""
    output = write_predictions(args.output, zip(text_ids, ranked))
    result: dict[str, Any] = {"mode": args.mode, "output": str(output), "queries": len(text_ids)}
    reference = ground_truth_of(text_data, emit) if text_data and Path(text_data).is_file() else None
    metrics = metrics_of(text_ids, ranked, reference, args.top_k, emit)
    if metrics is not None:
        metrics_file = Path(str(output) + ".metrics.json")
        metrics_file.write_text(json.dumps(metrics) + "\n", encoding="utf-8")
        result.update(metrics=metrics, metrics_file=str(metrics_file))
    return result


def _single(args: argparse.Namespace, emit: Emit) -> dict[str, Any]:
    options = options_from(args)
    device = options.torch_device()
    model = load_model(args.resume, options, device)
    encoded = encode(model, args.image_data, args.text_data, options, device, emit)
    del model
    writer = scores_path = None
    if args.save_scores:
        key = score_key(args.resume, args.image_data, args.text_data, options.score_identity(device))
        scores_path = member_scores_path(args.score_dir, args.resume, Path(args.text_data).stem, key)
        writer = ScoreMatrixWriter(scores_path, (len(encoded.texts.ids), len(encoded.images.ids)), options.scores_dtype)
    try:
        top = rank(encoded, options, device, writer)
        if writer is not None:
            write_sidecar(scores_path, encoded.texts.ids, encoded.images.ids, {
                "checkpoint": str(Path(args.resume).resolve()), "key": key,
                "options": options.score_identity(device),
            })
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    ranked = ids_of(top, encoded.images.ids)
    result = _finish(args, encoded.texts.ids, ranked, args.text_data, emit)
    if scores_path is not None:
        result["scores"] = str(scores_path)
    return result


def _member_metrics(saved: SavedScores, reference: dict | None, top_k: int) -> dict[str, float] | None:
    if reference is None:
        return None
    text_ids, ranked, _ = fuse([saved], [1.0], min(max(top_k, 10), len(saved.image_ids)))
    return metrics_of(text_ids, ranked, reference, 10)


def _ensemble(args: argparse.Namespace, emit: Emit) -> dict[str, Any]:
    options = options_from(args)
    n = len(args.members)
    fit = None
    if args.fit_weights_on:
        emit("phase", name="ensemble:fit-weights")
        reference = read_ground_truth(args.fit_weights_on)
        valid = []
        for i, checkpoint in enumerate(args.members):
            saved, _, _ = score_member(checkpoint, args.fit_images, args.fit_weights_on, options,
                                       args.score_dir, emit, member=i)
            valid.append(saved)
        fit = fit_weights(
            valid, reference, query_chunk=options.query_chunk, gallery_chunk=options.gallery_chunk,
            on_step=lambda step: emit("ensemble", progress=f"fit evaluation {step['evaluation']}",
                                      weights=step["weights"], metrics=step["metrics"]),
        )
        emit("ensemble", progress="fitted", weights=fit.weights, metrics=fit.metrics,
             equal_weights=fit.equal_weights, equal_metrics=fit.equal_metrics)
        weights = fit.weights
    else:
        weights = normalise_weights(args.weights, n)

    emit("phase", name="ensemble:score-members")
    reference = ground_truth_of(args.text_data, emit)
    members: list[SavedScores] = []
    reused: list[bool] = []
    member_metrics: list[dict[str, float] | None] = []
    for i, checkpoint in enumerate(args.members):
        saved, _, was_reused = score_member(checkpoint, args.image_data, args.text_data, options,
                                            args.score_dir, emit, member=i)
        members.append(saved)
        reused.append(was_reused)
        member_metrics.append(_member_metrics(saved, reference, args.top_k))
        emit("ensemble", member=i, checkpoint=str(checkpoint), weight=weights[i],
             progress=f"{i + 1}/{n}", metrics=member_metrics[-1])

    emit("phase", name="ensemble:fuse")
    text_ids, ranked, _ = fuse(members, weights, args.top_k, query_chunk=options.query_chunk,
                               gallery_chunk=options.gallery_chunk)
    result = _finish(args, text_ids, ranked, args.text_data, emit)
    result["members"] = [
        {"checkpoint": str(c), "scores": str(m.path), "weight": w, "reused": r, "metrics": mm}
        for c, m, w, r, mm in zip(args.members, members, weights, reused, member_metrics)
    ]
    result["weights"] = weights
    if fit is not None:
        result["fit"] = fit.as_dict()
    manifest = write_manifest(args.score_dir, {
        "members": result["members"],
        "weights": weights,
        "fit": result.get("fit"),
        "text_data": str(Path(args.text_data).resolve()),
        "image_data": str(Path(args.image_data).resolve()),
        "top_k": args.top_k,
        "output": result["output"],
    })
    result["manifest"] = str(manifest)
    emit("ensemble", progress="done", weights=weights, metrics=result.get("metrics"))
    return result


def _ensemble_last(args: argparse.Namespace, emit: Emit) -> dict[str, Any]:
    """Fuse saved matrices only: no checkpoint is loaded, no image is decoded."""
    text_data = args.text_data
    if args.members:
        paths = list(args.members)
        weights = normalise_weights(args.weights, len(paths))
    else:
        manifest = read_manifest(args.score_dir)
        paths = [m["scores"] for m in manifest["members"]]
        weights = normalise_weights(args.weights or manifest.get("weights"), len(paths))
        text_data = text_data or manifest.get("text_data")
    members = [load_saved_scores(p) for p in paths]
    for i, (saved, weight) in enumerate(zip(members, weights)):
        emit("ensemble", member=i, scores=str(saved.path), weight=weight, progress=f"{i + 1}/{len(members)}")
    text_ids, ranked, _ = fuse(members, weights, args.top_k, query_chunk=args.query_chunk,
                               gallery_chunk=args.gallery_chunk)
    result = _finish(args, text_ids, ranked, text_data, emit)
    result["members"] = [{"scores": str(m.path), "weight": w} for m, w in zip(members, weights)]
    result["weights"] = weights
    emit("ensemble", progress="done", weights=weights, metrics=result.get("metrics"))
    return result
