"""`cnclip import-cache`: the prototype's crawled-image folders -> the trainer's cache (torch-free)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.image_cache import DEFAULT_DIRNAME, default_cache_dir

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True,
                        help="the prototype's cache folder for the split (one folder per query)")
    parser.add_argument("--texts", required=True, help="the split's texts jsonl (its queries)")
    parser.add_argument("--split", required=True, choices=("valid", "test"))
    parser.add_argument("--cache-dir", default=None,
                        help=f"trainer cache (default: <data root>/{DEFAULT_DIRNAME})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace queries already in the cache (default: keep them)")
    parser.add_argument("--fail-picture", action="append", default=[], metavar="FILE",
                        help="the prototype's fail picture, if known (repeatable)")


def run(args: argparse.Namespace) -> int:
    from services.trainer.online.cache_import import import_prototype_cache

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    try:
        fail_pictures = [Path(p).read_bytes() for p in args.fail_picture]
        report = import_prototype_cache(args.source, args.texts, args.split, cache_dir,
                                        overwrite=args.overwrite, fail_pictures=fail_pictures)
    except (OSError, ValueError) as exc:
        print(f"cnclip import-cache: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.summary(), ensure_ascii=False))
    return 0
