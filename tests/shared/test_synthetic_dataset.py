"""The synthetic MUGE data set: format, determinism, held-out values and ground truth."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from shared.synthetic import ProductAttrs, parse_query
from shared.synthetic.dataset import SPLITS, load_manifest, make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[2]


def read_split(data_dir: Path, split: str):
    images = {}
    for line in (data_dir / f"{split}_imgs.tsv").read_text(encoding="utf-8").splitlines():
        image_id, b64 = line.split("\t")
        images[int(image_id)] = b64
    texts = [json.loads(line) for line in (data_dir / f"{split}_texts.jsonl").read_text(encoding="utf-8").splitlines()]
    return images, texts


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    manifest = make_synthetic_dataset(out, n_train=150, n_valid=50, n_test=40, seed=3, image_size=48)
    return out, manifest


def test_files_are_muge_format_with_decodable_jpegs(dataset):
    out, manifest = dataset
    for split in SPLITS:
        images, texts = read_split(out, split)
        assert len(texts) == {"train": 150, "valid": 50, "test": 40}[split]
        assert manifest["splits"][split]["images"] == len(images)
        for b64 in list(images.values())[:20]:
            image = Image.open(io.BytesIO(base64.urlsafe_b64decode(b64)))
            assert image.format == "JPEG" and image.size == (48, 48)
        for text in texts:
            assert set(text) == {"text_id", "text", "image_ids"}
            assert isinstance(text["text"], str) and text["text"]
            assert text["image_ids"], "every text has a matching image"
            assert set(text["image_ids"]) <= set(images), "ground truth lies in the split's gallery"


def test_ids_are_unique_across_splits(dataset):
    out, _ = dataset
    image_ids, text_ids = [], []
    for split in SPLITS:
        images, texts = read_split(out, split)
        image_ids += list(images)
        text_ids += [t["text_id"] for t in texts]
    assert len(image_ids) == len(set(image_ids))
    assert len(text_ids) == len(set(text_ids))


def test_held_out_values_never_occur_in_training(dataset):
    out, manifest = dataset
    assert manifest["held_out"] == {"colour": ["purple"], "category": ["shoe"]}
    _, texts = read_split(out, "train")
    for text in texts:
        attrs = parse_query(text["text"])
        assert attrs.colour != "purple" and attrs.category != "shoe", text
    for attrs in manifest["images"]["train"].values():
        assert attrs["colour"] != "purple" and attrs["category"] != "shoe"
    assert all(t["seen"] for t in manifest["texts"]["train"])


def test_valid_and_test_hold_unseen_texts_marked_in_the_manifest(dataset):
    out, manifest = dataset
    for split in ("valid", "test"):
        records = manifest["texts"][split]
        unseen = [t for t in records if not t["seen"]]
        assert manifest["splits"][split]["unseen_texts"] == len(unseen)
        assert 0.3 <= len(unseen) / len(records) <= 0.5
        for t in records:
            attrs = parse_query(t["text"])
            named_held = [n for n, v in (("colour", attrs.colour), ("category", attrs.category))
                          if v in ("purple", "shoe")]
            assert t["unseen_attributes"] == named_held
            assert t["seen"] == (not named_held)
        assert any("colour" in t["unseen_attributes"] for t in unseen)
        assert any("category" in t["unseen_attributes"] for t in unseen)


def test_ground_truth_is_every_image_of_the_described_product(dataset):
    out, manifest = dataset
    for split in ("valid", "test"):
        _, texts = read_split(out, split)
        attrs_of_image = {int(i): ProductAttrs(**a) for i, a in manifest["images"][split].items()}
        for text in texts:
            described = parse_query(text["text"])
            matching = sorted(i for i, a in attrs_of_image.items() if a == described)
            assert sorted(text["image_ids"]) == matching, text


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    args = dict(n_train=30, n_valid=12, n_test=12, image_size=32)
    make_synthetic_dataset(tmp_path / "a", seed=5, **args)
    make_synthetic_dataset(tmp_path / "b", seed=5, **args)
    make_synthetic_dataset(tmp_path / "c", seed=6, **args)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(["manifest.json"] + [f"{s}_{k}" for s in SPLITS for k in ("imgs.tsv", "texts.jsonl")])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train_texts.jsonl").read_bytes() != (tmp_path / "c" / "train_texts.jsonl").read_bytes()


def test_more_queries_than_products_share_ground_truth(tmp_path):
    manifest = make_synthetic_dataset(tmp_path, n_train=5, n_valid=500, n_test=5, image_size=32,
                                      held_out={}, max_images_per_product=1)
    _, texts = read_split(tmp_path, "valid")
    assert len(texts) == 500 and manifest["splits"]["valid"]["unseen_texts"] == 0
    by_product: dict[ProductAttrs, set] = {}
    for text in texts:
        by_product.setdefault(parse_query(text["text"]), set()).add(tuple(text["image_ids"]))
    assert len(by_product) == 400  # every product once before any repeats
    assert all(len(ids) == 1 for ids in by_product.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(held_out={"colour": ["teal"]}), "unknown colour"),
        (dict(held_out={"size": ["xl"]}), "unknown attribute"),
        (dict(held_out={"pattern": ["plain", "striped", "dotted", "checked", "starry"]}), "at least one pattern"),
        (dict(unseen_fraction=1.5), "unseen_fraction"),
        (dict(n_train=-1), "negative"),
    ],
)
def test_bad_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_dataset(tmp_path, **{**dict(n_train=2, n_valid=2, n_test=2, image_size=32), **kwargs})


def test_cli_make_synthetic(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "services.trainer.cli", "make-synthetic", "--out", str(out),
         "--n-train", "20", "--n-valid", "10", "--n-test", "8", "--seed", "1", "--image-size", "32",
         "--held-out", "colour=green,pattern=starry"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["splits"]["test"]["texts"] == 8
    manifest = load_manifest(out)
    assert manifest["held_out"] == {"colour": ["green"], "pattern": ["starry"]}
    assert all(a["colour"] != "green" and a["pattern"] != "starry" for a in manifest["images"]["train"].values())

    bad = subprocess.run(
        [sys.executable, "-m", "services.trainer.cli", "make-synthetic", "--out", str(out), "--held-out", "colour=teal"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "unknown colour 'teal'" in bad.stdout
