"""`cnclip evaluate GROUND_TRUTH PREDICTIONS [--output FILE]`: MUGE metrics as JSON."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ground_truth", help="MUGE texts jsonl with image_ids (e.g. valid_texts.jsonl)")
    parser.add_argument("predictions", help='predictions jsonl: {"text_id", "image_ids": [top 10]} per line')
    parser.add_argument("--output", default=None, help="also write the metrics JSON to this file")
    parser.add_argument("--top-k", type=int, default=10, help="number of predictions required per query (MUGE: 10)")


def run(args: argparse.Namespace) -> int:
    from shared.muge import EvaluationError, evaluate_files

    try:
        metrics = evaluate_files(args.ground_truth, args.predictions, k=args.top_k)
    except EvaluationError as exc:
        print(f"cnclip evaluate: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(metrics)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
