"""`cnclip index`: embed a gallery LMDB with a checkpoint and write ``experiments/<name>/index/``
(image ids, float16 embeddings, a manifest and a FAISS index: exact by default, ``--index-kind
ivf|hnsw`` for large galleries with their recall@10 against exact reported). The search
service serves it under its name. Under torchrun only rank 0 builds (the others exit at once).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from services.trainer.commands.options_cli import OptionsError, add_model_options, config_from_args

GROUPS = {"IndexOptions": "gallery, checkpoint and index", "ModelOptions": "model",
          "IndexRunOptions": "output", "IndexConfig": "output"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from services.trainer.index.config import IndexConfig

    add_model_options(parser, IndexConfig, GROUPS)


def config_from(args: argparse.Namespace):
    from services.trainer.index.config import IndexConfig

    return config_from_args(args, IndexConfig)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except OptionsError as exc:
        print(f"cnclip index: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        print("cnclip index: rank 0 builds the index; nothing to do on this rank", file=sys.stderr)
        return 0

    from services.trainer.commands.predict import StderrLog
    from services.trainer.index.build import IndexBuildError, build_index
    from services.trainer.train.events import JsonLinesSink, MultiSink

    sink = MultiSink(StderrLog(), JsonLinesSink(config.events, job_id=config.job_id) if config.events else None)
    try:
        result = build_index(config, sink.emit)
    except IndexBuildError as exc:
        sink.emit("state", state="failed", reason=str(exc))
        print(f"cnclip index: error: {exc}", file=sys.stderr)
        return 2
    finally:
        sink.close()
    print(json.dumps(result, ensure_ascii=False))
    return 0
