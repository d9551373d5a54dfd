"""A small MUGE-format data set of synthetic products, with attribute values held out of training.

Files written to ``out_dir`` for each split (train, valid, test):
- ``{split}_imgs.tsv``: ``image_id<TAB>base64 JPEG`` (URL-safe alphabet, as Chinese-CLIP's
  data preparation writes it),
- ``{split}_texts.jsonl``: ``{"text_id", "text", "image_ids"}``; ``image_ids`` is the complete
  ground truth: every picture of the split showing the product the text describes,
- ``manifest.json``: the settings, the held-out values, and for each text its attributes and
  whether it names a held-out ("unseen") value.

Training holds one text per picture, drawn only from the seen values. Valid and test hold one
or more pictures per product and mix seen products with products that name a held-out value;
every caption names all three attributes, so the ground truth is exact.
"""
from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from shared.synthetic.attributes import (
    ATTRIBUTE_NAMES,
    VOCABULARIES,
    ProductAttrs,
    random_attrs,
)
from shared.synthetic.captions import make_caption
from shared.synthetic.render import render_product

SPLITS = ("train", "valid", "test")
MANIFEST_NAME = "manifest.json"
# One colour and one category the model never sees in training.
DEFAULT_HELD_OUT: dict[str, tuple[str, ...]] = {"colour": ("purple",), "category": ("shoe",)}


def encode_jpeg_base64(image, quality: int = 90) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return base64.urlsafe_b64encode(buffer.getvalue()).decode("ascii")


def _check_held_out(held_out: Mapping[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    checked: dict[str, tuple[str, ...]] = {}
    for name, values in held_out.items():
        if name not in VOCABULARIES:
            raise ValueError(f"unknown attribute {name!r}; known: {', '.join(ATTRIBUTE_NAMES)}")
        values = tuple(values)
        for value in values:
            if value not in VOCABULARIES[name]:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(VOCABULARIES[name])}")
        if len(values) >= len(VOCABULARIES[name]):
            raise ValueError(f"at least one {name} must stay in training")
        if values:
            checked[name] = values
    return checked


def unseen_attributes(attrs: ProductAttrs, held_out: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Names of the attributes whose value is held out of training."""
    return [name for name in ATTRIBUTE_NAMES if getattr(attrs, name) in held_out.get(name, ())]


def _all_products() -> list[ProductAttrs]:
    return [
        ProductAttrs(colour, category, pattern)
        for colour in sorted(VOCABULARIES["colour"])
        for category in sorted(VOCABULARIES["category"])
        for pattern in sorted(VOCABULARIES["pattern"])
    ]


@dataclass
class _SplitWriter:
    """Accumulates one split and writes its two MUGE files."""

    name: str
    image_size: int
    jpeg_quality: int
    images: list[tuple[int, str]] = field(default_factory=list)
    texts: list[dict[str, Any]] = field(default_factory=list)
    image_attrs: dict[int, dict[str, str | None]] = field(default_factory=dict)

    def add_image(self, image_id: int, attrs: ProductAttrs, seed: int) -> None:
        picture = render_product(attrs, random.Random(seed), self.image_size)
        self.images.append((image_id, encode_jpeg_base64(picture, self.jpeg_quality)))
        self.image_attrs[image_id] = attrs.as_dict()

    def write(self, out_dir: Path) -> None:
        with open(out_dir / f"{self.name}_imgs.tsv", "w", encoding="utf-8", newline="\n") as f:
            for image_id, b64 in self.images:
                f.write(f"{image_id}\t{b64}\n")
        with open(out_dir / f"{self.name}_texts.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for text in self.texts:
                record = {k: text[k] for k in ("text_id", "text", "image_ids")}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


class _Ids:
    """Image and text ids unique across the splits, as MUGE's are."""

    def __init__(self) -> None:
        self.image = 0
        self.text = 0

    def next_image(self) -> int:
        self.image += 1
        return self.image

    def next_text(self) -> int:
        self.text += 1
        return self.text


def _text_record(text_id: int, caption: str, image_ids: list[int], attrs: ProductAttrs,
                 held_out: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    unseen = unseen_attributes(attrs, held_out)
    return {
        "text_id": text_id,
        "text": caption,
        "image_ids": image_ids,
        "attrs": attrs.as_dict(),
        "unseen_attributes": unseen,
        "seen": not unseen,
    }


def _make_train(writer: _SplitWriter, n_texts: int, rng: random.Random, ids: _Ids,
                held_out: Mapping[str, tuple[str, ...]]) -> None:
    exclude = {name: set(values) for name, values in held_out.items()}
    for _ in range(n_texts):
        attrs = random_attrs(rng, exclude)
        image_id = ids.next_image()
        writer.add_image(image_id, attrs, rng.getrandbits(64))
        writer.texts.append(
            _text_record(ids.next_text(), make_caption(attrs, rng), [image_id], attrs, held_out)
        )


def _make_eval(writer: _SplitWriter, n_texts: int, rng: random.Random, ids: _Ids,
               held_out: Mapping[str, tuple[str, ...]], unseen_fraction: float,
               max_images_per_product: int) -> None:
    products = _all_products()
    unseen = [p for p in products if unseen_attributes(p, held_out)]
    seen = [p for p in products if not unseen_attributes(p, held_out)]
    rng.shuffle(unseen)
    rng.shuffle(seen)
    n_unseen = round(n_texts * unseen_fraction) if unseen else 0
    # Distinct products first; only when a split asks for more texts than there are products do
    # products repeat (their texts then share one ground truth).
    chosen = [unseen[i % len(unseen)] for i in range(n_unseen)]
    chosen += [seen[i % len(seen)] for i in range(n_texts - n_unseen)]
    rng.shuffle(chosen)

    images_of: dict[ProductAttrs, list[int]] = {}
    for attrs in chosen:
        if attrs not in images_of:
            images_of[attrs] = []
            for _ in range(rng.randint(1, max_images_per_product)):
                image_id = ids.next_image()
                writer.add_image(image_id, attrs, rng.getrandbits(64))
                images_of[attrs].append(image_id)
    for attrs in chosen:
        writer.texts.append(
            _text_record(ids.next_text(), make_caption(attrs, rng), images_of[attrs], attrs, held_out)
        )


def make_synthetic_dataset(
    out_dir: str | Path,
    n_train: int = 2000,
    n_valid: int = 200,
    n_test: int = 200,
    seed: int = 0,
    image_size: int = 224,
    held_out: Mapping[str, Iterable[str]] | None = None,
    unseen_fraction: float = 0.4,
    max_images_per_product: int = 2,
    jpeg_quality: int = 90,
) -> dict[str, Any]:
    """Write the three splits and the manifest to ``out_dir``; return the manifest.

    ``n_train``, ``n_valid`` and ``n_test`` count texts (queries). A training text has one
    picture; a valid/test product has 1 to ``max_images_per_product`` pictures.
    ``held_out`` maps attribute names to values kept out of training (default: purple and
    shoes); ``unseen_fraction`` of the valid/test texts name at least one of them."""
    if min(n_train, n_valid, n_test) < 0:
        raise ValueError("split sizes must not be negative")
    if not 0.0 <= unseen_fraction <= 1.0:
        raise ValueError(f"unseen_fraction must be within [0, 1], got {unseen_fraction}")
    if max_images_per_product < 1:
        raise ValueError("max_images_per_product must be at least 1")
    held = _check_held_out(DEFAULT_HELD_OUT if held_out is None else held_out)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    ids = _Ids()
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    manifest: dict[str, Any] = {
        "seed": seed,
        "image_size": image_size,
        "held_out": {name: list(values) for name, values in held.items()},
        "unseen_fraction": unseen_fraction,
        "vocabulary": {
            name: {key: entry.zh for key, entry in vocab.items()} for name, vocab in VOCABULARIES.items()
        },
        "splits": {},
        "texts": {},
        "images": {},
    }
    for split in SPLITS:
        # One generator per split, seeded by name: a split's content does not depend on the
        # sizes of the others (only its ids do).
        rng = random.Random(f"cnclip-synthetic/{seed}/{split}")
        writer = _SplitWriter(split, image_size, jpeg_quality)
        if split == "train":
            _make_train(writer, sizes[split], rng, ids, held)
        else:
            _make_eval(writer, sizes[split], rng, ids, held, unseen_fraction, max_images_per_product)
        writer.write(out)
        manifest["splits"][split] = {
            "texts": len(writer.texts),
            "images": len(writer.images),
            "pairs": sum(len(t["image_ids"]) for t in writer.texts),
            "unseen_texts": sum(not t["seen"] for t in writer.texts),
        }
        manifest["texts"][split] = [
            {k: t[k] for k in ("text_id", "text", "attrs", "unseen_attributes", "seen")}
            for t in writer.texts
        ]
        manifest["images"][split] = {str(i): a for i, a in writer.image_attrs.items()}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return manifest


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(data_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
