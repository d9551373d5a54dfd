"""`cnclip ensemble`: fuse saved score matrices and fit ensemble weights, without any model.

    cnclip ensemble A.npy B.npy --weights 0.7 0.3 --output preds.jsonl [--ground-truth texts.jsonl]
    cnclip ensemble A_test.npy B_test.npy --fit-scores A_valid.npy B_valid.npy \
        --fit-ground-truth valid_texts.jsonl --output preds.jsonl
    cnclip ensemble --score-dir DIR            (the members and weights of the last ensemble run)

Score matrices are the ``.npy`` files (with their ``.npy.json`` id sidecars) that
``cnclip predict`` keeps under ``--score-dir``. Prints one JSON object: the weights, the fit
(fitted weights and their mean recall next to equal weights) and the metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.trainer.commands.arguments import positive_int, weight


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", nargs="*", help="member score matrices (.npy), all of the same texts and images")
    parser.add_argument("--score-dir", default=None, help="use the members of the last ensemble run in this dir")
    parser.add_argument("--weights", nargs="+", type=weight, default=None, help="one weight per member (default equal)")
    parser.add_argument("--fit-scores", nargs="+", default=None,
                        help="the same members' matrices on a validation split, in the same order")
    parser.add_argument("--fit-ground-truth", default=None, help="validation texts jsonl with image_ids")
    parser.add_argument("--ground-truth", default=None, help="texts jsonl with image_ids: report metrics of the fusion")
    parser.add_argument("--output", default=None, help="write the fused predictions jsonl here")
    parser.add_argument("--top-k", type=positive_int, default=10)
    parser.add_argument("--query-chunk", type=positive_int, default=1024)
    parser.add_argument("--gallery-chunk", type=positive_int, default=8192)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--events", default=None, help="write progress events as JSON lines to this file")
    parser.add_argument("--job-id", default=os.environ.get("CNCLIP_JOB_ID"), help=argparse.SUPPRESS)


def _fail(message: str) -> int:
    print(f"cnclip ensemble: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if bool(args.fit_scores) != bool(args.fit_ground_truth):
        return _fail("--fit-scores and --fit-ground-truth go together")
    if args.fit_scores and args.weights:
        return _fail("give either --weights or --fit-scores, not both")
    if args.scores and args.score_dir:
        return _fail("give score matrices or --score-dir, not both")
    if not args.scores and not args.score_dir:
        return _fail("name the member score matrices (.npy) or --score-dir of an earlier ensemble run")

    from services.trainer.commands.predict import StderrLog
    from services.trainer.predict.ensemble import (
        EnsembleError,
        fit_weights,
        fuse,
        load_saved_scores,
        normalise_weights,
        read_manifest,
    )
    from shared.muge import EvaluationError, read_ground_truth, write_predictions
    from services.trainer.predict.pipeline import metrics_of
    from services.trainer.train.events import JsonLinesSink, MultiSink

    sink = MultiSink(StderrLog(), JsonLinesSink(args.events, job_id=args.job_id) if args.events else None)
    emit = sink.emit
    try:
        paths, weights, ground_truth = list(args.scores), args.weights, args.ground_truth
        if args.score_dir:
            manifest = read_manifest(args.score_dir)
            paths = [m["scores"] for m in manifest["members"]]
            weights = weights or manifest.get("weights")
            if ground_truth is None and manifest.get("text_data") and Path(manifest["text_data"]).is_file():
                ground_truth = manifest["text_data"]
        if args.fit_scores and len(args.fit_scores) != len(paths):
            raise EnsembleError(f"{len(paths)} members but {len(args.fit_scores)} validation matrices")
        members = [load_saved_scores(p) for p in paths]
        result: dict[str, Any] = {"members": [str(m.path) for m in members]}
        if args.fit_scores:
            valid = [load_saved_scores(p) for p in args.fit_scores]
            fit = fit_weights(
                valid, read_ground_truth(args.fit_ground_truth),
                query_chunk=args.query_chunk, gallery_chunk=args.gallery_chunk, device=args.device,
                on_step=lambda step: emit("ensemble", progress=f"fit evaluation {step['evaluation']}",
                                          weights=step["weights"], metrics=step["metrics"]),
            )
            emit("ensemble", progress="fitted", weights=fit.weights, metrics=fit.metrics,
                 equal_weights=fit.equal_weights, equal_metrics=fit.equal_metrics)
            weights = fit.weights
            result["fit"] = fit.as_dict()
        weights = normalise_weights(weights, len(members))
        for i, (member, weight) in enumerate(zip(members, weights)):
            emit("ensemble", member=i, scores=str(member.path), weight=weight, progress=f"{i + 1}/{len(members)}")
        result["weights"] = weights
        text_ids, ranked, _ = fuse(members, weights, args.top_k, query_chunk=args.query_chunk,
                                   gallery_chunk=args.gallery_chunk, device=args.device)
        if args.output:
            result["output"] = str(write_predictions(args.output, zip(text_ids, ranked)))
        if ground_truth:
            result["metrics"] = metrics_of(text_ids, ranked, read_ground_truth(ground_truth), args.top_k, emit)
        emit("ensemble", progress="done", weights=weights, metrics=result.get("metrics"))
        emit("result", paths=[result["output"]] if args.output else [], metrics=result.get("metrics"))
    except (EnsembleError, EvaluationError, FileNotFoundError, ValueError) as exc:
        sink.emit("state", state="failed", reason=str(exc))
        sink.close()
        return _fail(str(exc))
    sink.close()
    print(json.dumps(result, ensure_ascii=False))
    return 0
