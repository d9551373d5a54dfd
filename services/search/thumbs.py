"""Thumbnails of gallery images, read from the index's gallery LMDB, resized once and kept
(bounded) in memory: a results grid asks for the same few dozen pictures again and again."""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image


class NoSuchImage(LookupError):
    pass


class Thumbnails:
    def __init__(self, size: int, capacity: int):
        self.size = size
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._splits: dict[str, object] = {}

    def get(self, gallery: str | Path, image_id: str) -> bytes:
        key = (str(gallery), image_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        data = self._render(gallery, image_id)
        if self.capacity:
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        return data

    def _split(self, gallery: str | Path):
        from services.trainer.data.lmdb_read import LmdbSplit

        split = self._splits.get(str(gallery))
        if split is None:
            try:
                split = self._splits[str(gallery)] = LmdbSplit(gallery)
            except (FileNotFoundError, ValueError) as exc:
                raise NoSuchImage(f"the index's gallery cannot be read: {exc}") from None
        return split

    def _render(self, gallery: str | Path, image_id: str) -> bytes:
        from services.trainer.data.lmdb_read import decode_image

        try:
            raw = self._split(gallery).image_b64(image_id)
        except KeyError:
            raise NoSuchImage(f"image {image_id!r} is not in the index's gallery") from None
        image = decode_image(raw).convert("RGB")
        image.thumbnail((self.size, self.size), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()
