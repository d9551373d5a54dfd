"""`cnclip convert SOURCE DEST`: Chinese-CLIP `.pt` <-> transformers directory.

A `.pt` becomes a directory loadable with `ChineseCLIPModel.from_pretrained` (with the
tokenizer vocabulary); a directory becomes a `.pt` that Chinese-CLIP's own scripts load. The
towers are taken from the directory's config or recognised from the weight shapes, unless
given. Epoch, step and name carry over; optimizer state does not (a directory has no place for
it), which the summary says.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a Chinese-CLIP .pt checkpoint or a transformers model directory")
    parser.add_argument("dest", help="the directory (from a .pt) or the .pt file (from a directory) to write")
    parser.add_argument("--vision-model", default=None,
                        help="image tower, e.g. ViT-B-16 (default: from the source's config or weight shapes)")
    parser.add_argument("--text-model", default=None,
                        help="text tower, e.g. RoBERTa-wwm-ext-base-chinese (default: as --vision-model)")
    parser.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")


def run(args: argparse.Namespace) -> int:
    from services.trainer.model.checkpoint import CheckpointError, load_model, save_checkpoint, save_transformers
    from services.trainer.model.configs import UnknownModelError

    source, dest = Path(args.source), Path(args.dest)
    if dest.exists() and not args.overwrite:
        return _fail(f"{dest} exists; pass --overwrite to replace it")
    if dest.resolve() == source.resolve():
        return _fail("SOURCE and DEST are the same path")
    try:
        model, checkpoint = load_model(source, vision_model=args.vision_model, text_model=args.text_model)
    except (CheckpointError, UnknownModelError) as exc:
        return _fail(str(exc))

    epoch, step, name = checkpoint["epoch"], checkpoint["step"], checkpoint["name"]
    if checkpoint["format"] == "transformers":
        if dest.is_dir():
            return _fail(f"{dest} is a directory; a transformers directory converts to a .pt file")
        save_checkpoint(dest, model, None, epoch=epoch or 0, step=step or 0, name=name or source.name)
        to_format = "pt"
    else:
        if dest.is_file():
            return _fail(f"{dest} is a file; a .pt converts to a transformers directory")
        save_transformers(model, dest, epoch=epoch, step=step, name=name)
        to_format = "transformers"
    summary = {
        "source": str(source),
        "dest": str(dest),
        "to": to_format,
        "vision_model": model.config.vision_model_name,
        "text_model": model.config.text_model_name,
        "epoch": epoch,
        "step": step,
        "name": name,
        "optimizer_dropped": checkpoint["optimizer"] is not None,
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _fail(message: str) -> int:
    print(f"cnclip convert: {message}", file=sys.stderr)
    return 2
