"""`cnclip`: one entry point with a subcommand per job (build-lmdb, train, predict, evaluate,
ensemble, convert, make-synthetic, import-cache, index). Each subcommand lives in
services/trainer/commands/ and is imported only when chosen, so `cnclip make-synthetic` works
without torch; `jobs` (the control service's client) and `secrets` live in services/client and
never import torch."""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "build-lmdb": ("build_lmdb", "Build LMDB from MUGE files ({split}_imgs.tsv, {split}_texts.jsonl)"),
    "train": ("train", "Fine-tune Chinese-CLIP (run under torchrun for several ranks)"),
    "predict": ("predict", "Top-k text-to-image predictions: single model, ensemble, ensemble-last"),
    "evaluate": ("evaluate", "MUGE metrics (R@1/5/10, mean recall) of a predictions file"),
    "ensemble": ("ensemble", "Fuse saved score matrices, fit ensemble weights"),
    "convert": ("convert", "Convert checkpoints between Chinese-CLIP .pt and transformers dirs"),
    "make-synthetic": ("make_synthetic", "Render a synthetic MUGE-format data set"),
    "import-cache": ("import_cache", "Import the prototype's crawled-image folders into the online cache"),
    "index": ("index", "Embed a gallery with a checkpoint into a searchable index (FAISS)"),
    # Not trainer commands: the job service's client and the compose secrets, both torch-free.
    "jobs": ("services.client.cli", "Submit, follow and manage jobs of the control service"),
    "secrets": ("services.client.compose_env", "Write .env beside docker-compose.yml with generated secrets"),
}


def _load(module: str):
    return importlib.import_module(module if "." in module else f"services.trainer.commands.{module}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnclip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            _load(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen subcommand's module is imported: heavy imports stay out of the others.
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(argv)
    module, _ = SUBCOMMANDS[args.command]
    return int(_load(module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
