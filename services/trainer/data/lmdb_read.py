"""Random-access readers of a Chinese-CLIP LMDB split (``{lmdb}/{split}/imgs`` and ``pairs``).

Each process opens its own read-only environment on first use (LMDB handles must not cross a
fork), without locks, so any number of DataLoader workers read any index in any order. Only
counts and ids are read when a dataset is built; nothing else is held in memory.
"""
from __future__ import annotations

import base64
import io
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from services.trainer.data.lmdb_env import close_readonly, open_readonly  # noqa: F401 (re-exported)
from services.trainer.tokenizer import DEFAULT_CONTEXT_LENGTH, tokenize

Transform = Callable[[Image.Image], Any]
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
_COUNT_KEYS = {b"num_images", b"num_samples"}


def decode_image(b64: bytes | memoryview) -> Image.Image:
    """A base64 JPEG (either base64 alphabet, as MUGE files use both) as a loaded PIL image."""
    data = base64.b64decode(bytes(b64).translate(_TO_STANDARD_ALPHABET))
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def parse_id(raw: bytes | str) -> int | str:
    """MUGE ids are integers; other ids stay strings."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return int(text) if text.isdigit() else text


class LmdbSplit:
    """The two environments of one split, opened lazily in each process."""

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        self.imgs_path = self.split_dir / "imgs"
        self.pairs_path = self.split_dir / "pairs"
        for path, what in ((self.split_dir, "LMDB split"), (self.imgs_path, "images LMDB"),
                           (self.pairs_path, "pairs LMDB")):
            if not (path / "data.mdb" if what != "LMDB split" else path).exists():
                raise FileNotFoundError(f"{what} {path} does not exist (build it with `cnclip build-lmdb`)")
        self.num_images = self._read_count(self.imgs_path, b"num_images")
        self.num_samples = self._read_count(self.pairs_path, b"num_samples")

    @staticmethod
    def _read_count(path: Path, key: bytes) -> int:
        with open_readonly(path).begin() as txn:
            value = txn.get(key)
        if value is None:
            raise ValueError(f"{path} has no {key.decode()} entry: not a Chinese-CLIP LMDB")
        return int(value.decode("utf-8"))

    def image_b64(self, image_id: int | str) -> bytes:
        with open_readonly(self.imgs_path).begin() as txn:
            value = txn.get(str(image_id).encode("utf-8"))
        if value is None:
            raise KeyError(f"image {image_id} is not in {self.imgs_path}")
        return value

    def image(self, image_id: int | str) -> Image.Image:
        return decode_image(self.image_b64(image_id))

    def pair(self, index: int) -> tuple[Any, Any, str]:
        """(image_id, text_id, text) of pair ``index``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"pair {index} is out of range (0..{self.num_samples - 1})")
        with open_readonly(self.pairs_path).begin() as txn:
            value = txn.get(str(index).encode("utf-8"))
        if value is None:
            raise KeyError(f"pair {index} is missing from {self.pairs_path}")
        image_id, text_id, text = pickle.loads(value)
        return image_id, text_id, text

    def texts(self) -> dict[Any, str]:
        """Every distinct text of the split by its text id, read in one transaction."""
        out: dict[Any, str] = {}
        with open_readonly(self.pairs_path).begin() as txn:
            for index in range(self.num_samples):
                value = txn.get(str(index).encode("utf-8"))
                if value is not None:
                    _, text_id, text = pickle.loads(value)
                    out.setdefault(text_id, text)
        return out

    def image_ids(self) -> list[int | str]:
        """Every image id of the split, numerically sorted when all are numbers."""
        with open_readonly(self.imgs_path).begin() as txn:
            keys = [key for key in txn.cursor().iternext(keys=True, values=False) if key not in _COUNT_KEYS]
        ids = [parse_id(key) for key in keys]
        if all(isinstance(i, int) for i in ids):
            ids.sort()
        return ids


class PairsDataset(Dataset):
    """The (image, text) pairs of a split: item ``i`` is
    ``(image, input_ids, attention_mask)``, or with ``return_text=True``
    ``(image, input_ids, attention_mask, text)`` so a batch carries its query texts.
    ``text_of(i)`` and ``pair(i)`` give the raw text and ids of any item."""

    def __init__(self, lmdb_split_dir: str | Path, transform: Transform | None,
                 context_length: int = DEFAULT_CONTEXT_LENGTH, return_text: bool = False) -> None:
        self.split = LmdbSplit(lmdb_split_dir)
        self.transform = transform
        self.context_length = context_length
        self.return_text = return_text

    def __len__(self) -> int:
        return self.split.num_samples

    def pair(self, index: int) -> tuple[Any, Any, str]:
        return self.split.pair(index)

    def text_of(self, index: int) -> str:
        return self.split.pair(index)[2]

    def __getitem__(self, index: int):
        image_id, _, text = self.split.pair(index)
        image = self.split.image(image_id)
        if self.transform is not None:
            image = self.transform(image)
        input_ids, attention_mask = tokenize([text], self.context_length)
        if self.return_text:
            return image, input_ids[0], attention_mask[0], text
        return image, input_ids[0], attention_mask[0]


class GalleryDataset(Dataset):
    """Every image of a split once: item ``i`` is ``(image_id, image)``."""

    def __init__(self, lmdb_split_dir: str | Path, transform: Transform | None) -> None:
        self.split = LmdbSplit(lmdb_split_dir)
        self.transform = transform
        self.image_ids = self.split.image_ids()
        if len(self.image_ids) != self.split.num_images:
            raise ValueError(
                f"{self.split.imgs_path} holds {len(self.image_ids)} images but records num_images="
                f"{self.split.num_images}"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        image = self.split.image(image_id)
        if self.transform is not None:
            image = self.transform(image)
        return image_id, image


def collate_gallery(batch: list[tuple[int | str, torch.Tensor]]) -> tuple[list[int | str], torch.Tensor]:
    """Ids as a list (they may be strings), images stacked."""
    ids, images = zip(*batch)
    return list(ids), torch.stack(list(images))
