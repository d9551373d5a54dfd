"""The leakage guard: crawled images that are copies of a gallery image never reach training.

A crawled picture that is the gallery's own picture (re-encoded, resized) would let the model
learn the answer to the very retrieval it is scored on. Each gallery image gets a 256-bit
perceptual hash (DCT hash of ``imagehash`` with hash_size 16: robust to re-encoding and
resizing, unlike a byte hash); a crawled image whose hash lies within ``threshold`` bits of any
gallery hash is dropped. The comparison is one vectorised XOR + popcount over all gallery
hashes (four uint64 words each), so ~30k gallery images cost about a millisecond per image.

Torch-free; reads an LMDB split with the ``lmdb`` package directly.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from services.trainer.data.lmdb_env import open_readonly

# 64-bit hashes (hash_size 8) do not separate small synthetic pictures: distinct 64 px products
# came within 2 bits of each other. At 256 bits, measured on the synthetic set
# (tests/bench/bench_leakage.py): re-encodes (down to JPEG quality 50) and resizes of a gallery
# picture stay within 14 bits, different products never came closer than 38 (64 and 224 px).
HASH_SIZE = 16
HASH_WORDS = HASH_SIZE * HASH_SIZE // 64
DEFAULT_THRESHOLD = 24
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
_COUNT_KEYS = {b"num_images", b"num_samples"}


def perceptual_hash(image: Image.Image | bytes) -> np.ndarray:
    """The perceptual hash of a picture (PIL image or encoded bytes) as HASH_WORDS uint64s."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(image)))
        # JPEG: decode only the grey channel (the hash is of grey levels) at a reduced DCT scale
        # that still covers the hash's 64x64 input: several times faster than a full decode.
        image.draft("L", (HASH_SIZE * 4, HASH_SIZE * 4))
    bits = imagehash.phash(image, hash_size=HASH_SIZE).hash.flatten()
    return np.packbits(bits).view(np.uint64)


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


class LeakageGuard:
    """Near-duplicate test against a fixed set of gallery hashes."""

    def __init__(self, gallery_hashes: Iterable[np.ndarray], threshold: int = DEFAULT_THRESHOLD):
        if not 0 <= threshold <= HASH_WORDS * 64:
            raise ValueError(f"threshold must be between 0 and {HASH_WORDS * 64} bits, got {threshold}")
        rows = list(gallery_hashes)
        self.hashes = (np.stack(rows) if rows else np.zeros((0, HASH_WORDS))).astype(np.uint64)
        if self.hashes.shape[1:] != (HASH_WORDS,):
            raise ValueError(f"gallery hashes must have {HASH_WORDS} uint64 words each")
        # One contiguous array per word: XOR and popcount then run over long contiguous rows.
        self._words = np.ascontiguousarray(self.hashes.T)
        self.threshold = threshold

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def from_images(cls, images: Iterable[Image.Image | bytes],
                    threshold: int = DEFAULT_THRESHOLD) -> "LeakageGuard":
        return cls((perceptual_hash(image) for image in images), threshold)

    @classmethod
    def from_lmdb(cls, split_dir: str | Path, threshold: int = DEFAULT_THRESHOLD) -> "LeakageGuard":
        """The gallery of a Chinese-CLIP LMDB split (``{split_dir}/imgs``: image id -> base64
        JPEG). A picture that does not decode cannot be crawled back either and is skipped."""
        path = Path(split_dir) / "imgs"
        if not (path / "data.mdb").is_file():
            raise FileNotFoundError(f"no LMDB image database at {path}")
        hashes: list[np.ndarray] = []
        # The process's shared handle: LMDB allows one per file, and the data loaders of the
        # same run read this split too.
        with open_readonly(path).begin(buffers=True) as txn:
            for key, value in txn.cursor():
                if bytes(key) in _COUNT_KEYS:
                    continue
                data = base64.b64decode(bytes(value).translate(_TO_STANDARD_ALPHABET))
                try:
                    hashes.append(perceptual_hash(data))
                except (OSError, ValueError):
                    continue
        return cls(hashes, threshold)

    def distances(self, image: Image.Image | bytes) -> np.ndarray:
        """Hamming distance from the picture to every gallery picture."""
        query = perceptual_hash(image)
        total = np.zeros(len(self.hashes), dtype=np.uint16)
        for word, value in zip(self._words, query):
            total += _popcount(np.bitwise_xor(word, value))
        return total

    def is_leaked(self, image: Image.Image | bytes) -> bool:
        """True for a near-copy of a gallery picture. Bytes that do not decode raise
        ``OSError``/``ValueError`` (callers validate images first)."""
        return bool(len(self.hashes)) and int(self.distances(image).min()) <= self.threshold

    def filter(self, images: Sequence[bytes]) -> tuple[list[bytes], int]:
        """(the images that are no gallery copy, in order; how many were dropped)."""
        kept = [image for image in images if not self.is_leaked(image)]
        return kept, len(images) - len(kept)
