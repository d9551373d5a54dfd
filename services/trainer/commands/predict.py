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
from typing import Any

from services.trainer.commands.options_cli import OptionsError, add_model_options, config_from_args

GROUPS = {"PredictOptions": "data, checkpoints and output", "ModelOptions": "model",
          "OnlineOptions": "online learning (test time)", "OptimOptions": "test-time online steps",
          "PredictRunOptions": "output", "PredictConfig": "output"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from services.trainer.predict.config import PredictConfig

    add_model_options(parser, PredictConfig, GROUPS)


def config_from(args: argparse.Namespace):
    from services.trainer.predict.config import PredictConfig

    return config_from_args(args, PredictConfig)


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
        args = config_from(args)
    except OptionsError as exc:
        print(f"cnclip predict: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        print("cnclip predict: rank 0 predicts; nothing to do on this rank", file=sys.stderr)
        return 0

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
