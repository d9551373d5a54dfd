"""`cnclip make-synthetic`: render a synthetic MUGE-format data set (torch-free)."""
from __future__ import annotations

import argparse
import json
import time

from shared.synthetic.attributes import VOCABULARIES
from shared.synthetic.dataset import DEFAULT_HELD_OUT, make_synthetic_dataset


def _held_out(text: str) -> dict[str, list[str]]:
    """``colour=purple,category=shoe`` -> {"colour": ["purple"], "category": ["shoe"]};
    an empty string holds nothing out."""
    held: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in VOCABULARIES:
            raise argparse.ArgumentTypeError(
                f"expected NAME=VALUE with NAME in {', '.join(VOCABULARIES)}, got {item!r}"
            )
        held.setdefault(name, []).append(value)
    return held


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_held = ",".join(f"{k}={v}" for k, values in DEFAULT_HELD_OUT.items() for v in values)
    parser.add_argument("--out", "--out-dir", dest="out", required=True, help="output folder")
    parser.add_argument("--n-train", type=int, default=2000, help="training texts (one image each)")
    parser.add_argument("--n-valid", type=int, default=200, help="validation texts")
    parser.add_argument("--n-test", type=int, default=200, help="test texts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--held-out", type=_held_out, default=None,
        help=f"attribute values kept out of training, NAME=VALUE,... (default: {default_held}; '' for none)",
    )
    parser.add_argument("--unseen-fraction", type=float, default=0.4,
                        help="share of valid/test texts naming a held-out value")
    parser.add_argument("--max-images-per-product", type=int, default=2)
    parser.add_argument("--jpeg-quality", type=int, default=90)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        manifest = make_synthetic_dataset(
            args.out,
            n_train=args.n_train,
            n_valid=args.n_valid,
            n_test=args.n_test,
            seed=args.seed,
            image_size=args.image_size,
            held_out=args.held_out,
            unseen_fraction=args.unseen_fraction,
            max_images_per_product=args.max_images_per_product,
            jpeg_quality=args.jpeg_quality,
        )
    except ValueError as exc:
        print(f"make-synthetic: {exc}")
        return 2
    summary = {
        "out": str(args.out),
        "held_out": manifest["held_out"],
        "splits": manifest["splits"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0
