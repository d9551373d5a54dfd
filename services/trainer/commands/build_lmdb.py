"""`cnclip build-lmdb`: MUGE files -> Chinese-CLIP LMDB, with a report of every bad line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.trainer.data.lmdb_build import LmdbBuildError, build_lmdb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_dir", "--data-dir", dest="data_dir", required=True,
                        help="folder with {split}_imgs.tsv and {split}_texts.jsonl")
    parser.add_argument("--splits", required=True, help="comma-separated, e.g. train,valid,test")
    parser.add_argument("--lmdb_dir", "--lmdb-dir", dest="lmdb_dir", default=None,
                        help="output folder (default: {data_dir}/lmdb)")
    parser.add_argument("--on-error", "--on_error", dest="on_error", choices=("skip", "fail"), default="skip",
                        help="skip bad lines (reported) or fail the build without writing anything")
    parser.add_argument("--verify-images", dest="verify", choices=("structure", "decode"), default="structure",
                        help="structure: strict base64 plus image signature and end marker (fast); "
                             "decode: decode every image")
    parser.add_argument("--threads", type=int, default=2, help="decoding threads for --verify-images decode")
    parser.add_argument("--report", default=None,
                        help="JSON report file (default: {lmdb_dir}/build_report.json)")


def run(args: argparse.Namespace) -> int:
    lmdb_dir = Path(args.lmdb_dir) if args.lmdb_dir else Path(args.data_dir) / "lmdb"
    report_path = Path(args.report) if args.report else lmdb_dir / "build_report.json"
    try:
        report = build_lmdb(args.data_dir, args.splits, lmdb_dir, on_error=args.on_error,
                            verify=args.verify, threads=args.threads)
        status = 0
    except LmdbBuildError as exc:
        report = exc.report
        status = 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"build-lmdb: {exc}")
        return 2
    print(report.summary())
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"report: {report_path}")
    return status
