"""`cnclip predict`: top-k text-to-image predictions, the prototype's predict.sh modes.

- ``single``: one checkpoint (``--resume``).
- ``ensemble``: several checkpoints (``--members``) with ``--weights``; every member's score
  matrix is kept under ``--score-dir`` and reused by later runs; weights can be fitted on a
  validation split (``--fit-weights-on VALID_TEXTS --fit-images VALID_LMDB``).
- ``ensemble-last``: no model at all: fuses the score matrices of the last ensemble run in
  ``--score-dir`` (or the ``.npy`` files given with ``--members``).

Writes ``{"text_id", "image_ids"}`` lines to ``--output``; when the texts file carries
ground-truth image_ids, prints the MUGE metrics and writes them to ``{output}.metrics.json``.
Under torchrun only rank 0 predicts (the others exit at once).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.trainer.commands.arguments import add_online_arguments, online_mode, positive_int, weight

MODES = ("single", "ensemble", "ensemble-last")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="single")
    data = parser.add_argument_group("data")
    data.add_argument("--image-data", default=None, help="LMDB split dir of the gallery (.../lmdb/test)")
    data.add_argument("--text-data", default=None, help="queries jsonl (.../test_texts.jsonl)")
    data.add_argument("--context-length", type=positive_int, default=52)
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for images")
    data.add_argument("--img-batch-size", type=positive_int, default=64)
    data.add_argument("--text-batch-size", type=positive_int, default=64)

    members = parser.add_argument_group("checkpoints")
    members.add_argument("--resume", default=None, help="checkpoint (.pt or transformers dir) for --mode single")
    members.add_argument("--members", nargs="+", default=None,
                         help="ensemble checkpoints; with ensemble-last: saved .npy score matrices")
    members.add_argument("--weights", nargs="+", type=weight, default=None,
                         help="one weight per member (default: equal, or the last ensemble's)")
    members.add_argument("--score-dir", default=None,
                         help="member score matrices, reused on re-run (default $DATAPATH/npy_save)")
    members.add_argument("--fit-weights-on", default=None, metavar="VALID_TEXTS",
                         help="fit the ensemble weights for mean recall on this validation texts jsonl")
    members.add_argument("--fit-images", default=None, metavar="VALID_LMDB",
                         help="LMDB split dir of the validation gallery (with --fit-weights-on)")

    out = parser.add_argument_group("output")
    out.add_argument("--output", default=None,
                     help="predictions jsonl (default $DATAPATH/experiments/results/test_predictions[_ensemble].jsonl)")
    out.add_argument("--top-k", type=positive_int, default=10)
    out.add_argument("--save-scores", action="store_true",
                     help="single mode: also keep the score matrix under --score-dir")
    out.add_argument("--scores-dtype", choices=("float16", "float32"), default="float32")
    out.add_argument("--query-chunk", type=positive_int, default=1024, help="queries per scoring block")
    out.add_argument("--gallery-chunk", type=positive_int, default=8192, help="images per scoring block")
    out.add_argument("--events", default=None, help="write progress events as JSON lines to this file")
    out.add_argument("--job-id", default=os.environ.get("CNCLIP_JOB_ID"), help=argparse.SUPPRESS)
    out.add_argument("--no-progress", action="store_true", help="accepted for symmetry with train (no bar here)")

    model = parser.add_argument_group("model")
    model.add_argument("--vision-model", default="ViT-B-16")
    model.add_argument("--text-model", default="RoBERTa-wwm-ext-base-chinese")
    model.add_argument("--precision", choices=("amp", "bf16", "fp16", "fp32"), default="amp",
                       help="GPU: amp/fp16 = fp16 autocast, bf16 = bf16 autocast; CPU: fp32 unless bf16")
    model.add_argument("--attn-implementation", choices=("sdpa", "eager", "flash_attention_2"), default=None)
    model.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    online = add_online_arguments(parser, "test")
    online.add_argument("--online-max-epochs", type=positive_int, default=None,
                        help="online epochs over the test queries (used with --online live|cache; ignored when off)")


class UsageError(ValueError):
    pass


def _check(args: argparse.Namespace) -> None:
    try:
        mode = online_mode(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if mode != "off":
        raise UsageError(
            f"online learning during prediction (--online {mode}) is not available in this build: "
            "only --online off is supported; predict without online learning"
        )
    if args.mode != "ensemble-last":
        for name in ("image_data", "text_data"):
            if getattr(args, name) is None:
                raise UsageError(f"--mode {args.mode} needs --{name.replace('_', '-')}")
        if not Path(args.text_data).is_file():
            raise UsageError(f"texts file not found: {args.text_data}")
        if not Path(args.image_data).is_dir():
            raise UsageError(f"image LMDB not found: {args.image_data}")
    if args.mode == "single":
        if not args.resume:
            raise UsageError("--mode single needs --resume CHECKPOINT")
        if args.members or args.weights or args.fit_weights_on:
            raise UsageError("--members, --weights and --fit-weights-on belong to --mode ensemble")
    if args.mode == "ensemble":
        if not args.members:
            raise UsageError("--mode ensemble needs --members CHECKPOINT [CHECKPOINT ...]")
        if args.resume:
            raise UsageError("--mode ensemble takes its checkpoints from --members, not --resume")
        missing = [m for m in args.members if not Path(m).exists()]
        if missing:
            raise UsageError(f"checkpoint not found: {', '.join(missing)}")
    if args.weights is not None and args.members and len(args.weights) != len(args.members):
        raise UsageError(f"{len(args.members)} members but {len(args.weights)} weights")
    if args.weights is not None and sum(args.weights) <= 0:
        raise UsageError("at least one weight must be positive")
    if bool(args.fit_weights_on) != bool(args.fit_images):
        raise UsageError("--fit-weights-on VALID_TEXTS and --fit-images VALID_LMDB go together")
    if args.fit_weights_on and args.mode != "ensemble":
        raise UsageError("weights are fitted in --mode ensemble (use `cnclip ensemble --fit-...` on saved matrices)")
    if args.fit_weights_on and args.weights:
        raise UsageError("give either --weights or --fit-weights-on, not both")


def _defaults(args: argparse.Namespace) -> None:
    from shared.settings import common_settings

    root = common_settings().data_root
    if args.score_dir is None:
        args.score_dir = str(root / "npy_save")
    if args.output is None:
        name = "test_predictions.jsonl" if args.mode == "single" else "test_predictions_ensemble.jsonl"
        args.output = str(root / "experiments" / "results" / name)


def _sink(args: argparse.Namespace):
    from services.trainer.train.events import JsonLinesSink, MultiSink

    return MultiSink(StderrLog(), JsonLinesSink(args.events, job_id=args.job_id) if args.events else None)


class StderrLog:
    """Log and phase events as plain lines on stderr (batch-job friendly)."""

    def emit(self, type: str, **data: Any) -> None:
        if type in ("log", "phase"):
            print(f"[{type}] {data.get('message') or data.get('name')}", file=sys.stderr, flush=True)
        elif type == "ensemble":
            shown = {k: v for k, v in data.items() if v is not None}
            print(f"[ensemble] {json.dumps(shown, ensure_ascii=False, default=str)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
    except UsageError as exc:
        print(f"cnclip predict: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        print("cnclip predict: rank 0 predicts; nothing to do on this rank", file=sys.stderr)
        return 0
    _defaults(args)

    from services.trainer.predict.run import PredictError, predict

    sink = _sink(args)
    try:
        result = predict(args, sink.emit)
    except PredictError as exc:
        sink.emit("state", state="failed", reason=str(exc))
        print(f"cnclip predict: error: {exc}", file=sys.stderr)
        return 2
    finally:
        sink.close()
    print(json.dumps(result, ensure_ascii=False))
    return 0
