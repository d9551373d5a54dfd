"""Result pictures of the shop and the broken variants its faults serve.

Pictures come from the shared synthetic renderer (the same one the demo data set is drawn
with), for the attributes the query names; rendering costs milliseconds, so JPEGs are kept in
an LRU cache keyed by (query, index).
"""
from __future__ import annotations

import io
import random
import struct
import zlib
from functools import lru_cache

from shared.synthetic.render import render_product

from services.shop.catalog import Catalog

_JPEG_SOI = b"\xff\xd8"
_APP15 = b"\xff\xef"
_MAX_SEGMENT_DATA = 65533  # a JPEG segment's 16-bit length counts its own two bytes


class PictureStore:
    def __init__(self, catalog: Catalog, *, size: int, quality: int, cache_items: int):
        self.catalog = catalog
        self.size = size
        self.quality = quality
        self._cached_jpeg = lru_cache(maxsize=cache_items)(self._render_jpeg)

    def jpeg(self, query: str, index: int) -> bytes:
        return self._cached_jpeg(query, index)

    def _render_jpeg(self, query: str, index: int) -> bytes:
        attrs = self.catalog.picture_attrs(query, index)
        picture = render_product(attrs, self.catalog.picture_seed(query, index), self.size)
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=self.quality)
        return out.getvalue()

    def cache_info(self) -> dict:
        info = self._cached_jpeg.cache_info()
        return {"hits": info.hits, "misses": info.misses, "size": info.currsize}


# ---- broken variants ----------------------------------------------------------------------

HTML_INSTEAD_OF_IMAGE = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>访问受限</title></head>"
    "<body><h1>访问受限</h1><p>您访问的资源暂时无法显示，请稍后再试。</p></body></html>"
).encode("utf-8")


def truncated(jpeg: bytes) -> bytes:
    """The first half of the file: a valid header, then the data stops mid-scan."""
    return jpeg[: len(jpeg) // 2]


@lru_cache(maxsize=2)
def _padding(total_bytes: int) -> bytes:
    """APP15 segments of random bytes (incompressible, so no transport shrinks them)."""
    data = random.Random(total_bytes).randbytes(total_bytes)
    segments = []
    for start in range(0, total_bytes, _MAX_SEGMENT_DATA):
        chunk = data[start:start + _MAX_SEGMENT_DATA]
        segments.append(_APP15 + struct.pack(">H", len(chunk) + 2) + chunk)
    return b"".join(segments)


def huge(jpeg: bytes, total_bytes: int) -> bytes:
    """A valid JPEG of at least ``total_bytes``: the picture carrying that much metadata."""
    assert jpeg.startswith(_JPEG_SOI)
    return _JPEG_SOI + _padding(total_bytes) + jpeg[len(_JPEG_SOI):]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=2)
def decompression_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side pixels (400 million at 20000) that packs into a few
    hundred KB because every pixel is black. Built once, row by row, to stay small in memory."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte 0, then the pixels
    body = [compressor.compress(row) for _ in range(side)]
    body.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", b"".join(body)) + _png_chunk(b"IEND", b""))
