"""Random-access LMDB readers, the texts reader and image transforms."""
from __future__ import annotations

import json
import multiprocessing

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from services.trainer.data.lmdb_read import GalleryDataset, PairsDataset, collate_gallery, decode_image
from services.trainer.data.texts import TextsDataset, read_texts
from services.trainer.data.transforms import image_transform
from services.trainer.tokenizer import tokenize

# A worker that does not deliver within this is stuck (a fork that inherited a held lock):
# the test fails with the DataLoader's error instead of hanging until the suite's timeout.
WORKER_TIMEOUT_S = 120


def expected_pairs(synthetic_data, split):
    texts = [json.loads(l) for l in synthetic_data.texts(split).read_text(encoding="utf-8").splitlines()]
    return [(i, t["text_id"], t["text"]) for t in texts for i in t["image_ids"]]


def test_pairs_dataset_items(synthetic_data):
    dataset = PairsDataset(synthetic_data.lmdb("valid"), image_transform(64), context_length=24)
    pairs = expected_pairs(synthetic_data, "valid")
    assert len(dataset) == len(pairs)
    image, input_ids, attention_mask = dataset[3]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    ids, mask = tokenize([pairs[3][2]], 24)
    assert torch.equal(input_ids, ids[0]) and torch.equal(attention_mask, mask[0])
    assert dataset.text_of(3) == pairs[3][2]
    assert dataset.pair(3) == pairs[3]
    with_text = PairsDataset(synthetic_data.lmdb("valid"), None, return_text=True)
    picture, _, _, text = with_text[5]
    assert isinstance(picture, Image.Image) and picture.size == (64, 64)
    assert text == pairs[5][2]
    with pytest.raises(IndexError):
        dataset.pair(len(dataset))


def test_gallery_and_decoding_match_the_tsv(synthetic_data):
    gallery = GalleryDataset(synthetic_data.lmdb("test"), None)
    lines = dict(l.split("\t") for l in synthetic_data.imgs("test").read_text().splitlines())
    assert gallery.image_ids == sorted(int(i) for i in lines)
    image_id, image = gallery[0]
    reference = decode_image(lines[str(image_id)].encode())
    assert image.tobytes() == reference.tobytes()
    with pytest.raises(KeyError, match="not in"):
        gallery.split.image(999999)


def test_missing_lmdb_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cnclip build-lmdb"):
        PairsDataset(tmp_path / "nothing", None)


def collect(loader):
    items = {}
    for batch in loader:
        index, image, input_ids = batch
        for i, im, ids in zip(index.tolist(), image, input_ids):
            items[i] = (im, ids)
    return items


class Indexed(torch.utils.data.Dataset):
    """Tags each item with its index so out-of-order worker results can be matched."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, input_ids, _ = self.dataset[index]
        return index, image, input_ids


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_several_workers_read_random_indices(synthetic_data, context):
    dataset = PairsDataset(synthetic_data.lmdb("train"), image_transform(64), context_length=16)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1)).tolist()[:60]
    dataset[order[0]]  # the parent opens its handles before the workers start
    reference = {i: (dataset[i][0], dataset[i][1]) for i in order}
    loader = DataLoader(Indexed(dataset), batch_size=7, sampler=order, num_workers=2,
                        multiprocessing_context=multiprocessing.get_context(context), timeout=WORKER_TIMEOUT_S)
    items = collect(loader)
    assert sorted(items) == sorted(order)
    for i in order:
        assert torch.equal(items[i][0], reference[i][0]) and torch.equal(items[i][1], reference[i][1])


def test_gallery_loader_with_workers(synthetic_data):
    gallery = GalleryDataset(synthetic_data.lmdb("valid"), image_transform(64))
    loader = DataLoader(gallery, batch_size=16, num_workers=2, collate_fn=collate_gallery, timeout=WORKER_TIMEOUT_S)
    ids = [i for batch_ids, images in loader for i in batch_ids]
    assert ids == gallery.image_ids
    assert len(ids) == synthetic_data.manifest["splits"]["valid"]["images"]


def test_texts_dataset(synthetic_data):
    dataset = TextsDataset(synthetic_data.texts("test"), context_length=20)
    lines = [json.loads(l) for l in synthetic_data.texts("test").read_text(encoding="utf-8").splitlines()]
    assert len(dataset) == len(lines)
    text_id, text, input_ids, attention_mask = dataset[4]
    assert (text_id, text) == (lines[4]["text_id"], lines[4]["text"])
    ids, mask = tokenize([text], 20)
    assert torch.equal(input_ids, ids[0]) and torch.equal(attention_mask, mask[0])
    batch = next(iter(DataLoader(dataset, batch_size=5, num_workers=1, timeout=WORKER_TIMEOUT_S)))
    assert batch[0].tolist() == [l["text_id"] for l in lines[:5]]
    assert list(batch[1]) == [l["text"] for l in lines[:5]]
    assert dataset.text_ids == [l["text_id"] for l in lines]
    assert read_texts(synthetic_data.texts("test"))[0].image_ids == tuple(lines[0]["image_ids"])


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text_id": 1, "text": "a"}\n{"text_id": 2, "text": ', "line 2: not valid JSON"),
        ('{"text_id": 1, "text": "a"}\n{"text_id": 1, "text": "b"}\n', "line 2: text_id 1 appears twice"),
        ('{"text": "a"}\n', "line 1: no text_id"),
        ('{"text_id": 1}\n', "line 1: text_id 1 has no text"),
        ('{"text_id": 1, "text": 5}\n', "line 1: 'text' of text_id 1 must be a string"),
        ('{"text_id": [1], "text": "a"}\n', r"line 1: text_id \[1\] must be an integer or a string"),
        ('{"text_id": 1, "text": "a", "image_ids": 3}\n', "line 1: image_ids of text_id 1 must be a list"),
    ],
)
def test_malformed_texts_name_the_line(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        TextsDataset(path)


def test_eval_transform_matches_chinese_clip(synthetic_data):
    from cn_clip.training.data import LMDBDataset

    image = GalleryDataset(synthetic_data.lmdb("test"), None)[0][1]
    theirs = LMDBDataset.__new__(LMDBDataset)
    theirs.split, theirs.use_augment = "val", False
    reference = theirs._build_transform(64)(image)
    assert torch.equal(image_transform(64)(image), reference)
    grey = Image.new("L", (50, 30), 128)
    assert image_transform(32)(grey).shape == (3, 32, 32)


def test_train_transform_augments_like_chinese_clip(synthetic_data):
    from cn_clip.training.data import LMDBDataset

    theirs = LMDBDataset.__new__(LMDBDataset)
    theirs.split, theirs.use_augment = "train", True
    their_steps = [type(t).__name__ for t in theirs._build_transform(64).transforms if callable(t)]
    our_steps = [type(t).__name__ for t in image_transform(64, train=True, use_augment=True).transforms]
    # The same timm pipeline (crop, flip, AutoAugment, tensor, normalise) plus random erasing.
    assert [s for s in our_steps if s != "function"] == [s for s in their_steps if s != "function"] + ["RandomErasing"]
    image = Image.new("RGBA", (80, 70), (10, 200, 30, 255))
    torch.manual_seed(0)
    out = image_transform(64, train=True, use_augment=True)(image)
    assert out.shape == (3, 64, 64)
    # Without augmentation, training uses the plain pipeline.
    assert [type(t).__name__ for t in image_transform(64, train=True).transforms][0] == "Resize"
