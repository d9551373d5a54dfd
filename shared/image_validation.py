"""Checks and normalises image bytes that come from outside (crawled pages, caches).

Torch-free so the crawler and the trainer's image cache apply the same rules. Pillow does the
decoding: it knows every format a shop serves, its ``verify`` catches broken structure and a
full ``load`` catches truncation, and ``draft`` lets large JPEGs decode at reduced scale.

Every rejection raises :class:`InvalidImage` whose ``reason`` is one short, human-readable
sentence (it ends up in failure logs next to the URL).

Bytes after a JPEG's or PNG's own data (a motion photo's video, padding, appended metadata) are
no fault: decoders ignore them and Chinese-CLIP keeps such files. :func:`trailing_bytes` finds
where the image's data ends, so a file cut short (no end marker) is told apart from one with a
tail; the LMDB build applies the same function, so both sides accept the same files.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a product image may legitimately come in; anything else (e.g. an SVG, an ICO or
# a PDF sniffed as an image) is refused rather than guessed at.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "MPO"})


class InvalidImage(ValueError):
    """The bytes are not a usable image; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageRules:
    """What an acceptable image is and what it is turned into."""

    min_side: int = 64                  # shorter side below this carries no useful detail
    max_pixels: int = 40_000_000        # width*height cap: refuse decompression bombs unread
    max_bytes: int = 10 * 1024 * 1024   # encoded size cap (downloads enforce it while streaming)
    # A few KB of PNG can declare 600000x64 pixels: under the pixel cap, yet decoding one row
    # at a time still allocates the whole strip. No product picture is that long or narrow.
    max_side: int = 20_000
    max_aspect: float = 25.0            # longer side / shorter side
    target_short_side: int = 224        # shorter side after resizing (0 keeps the size)
    jpeg_quality: int = 90


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    trailing_bytes: int = 0  # bytes after the image's end marker (information, not a fault)


# Signature -> (format, the bytes that end a complete file of it). A PNG ends with its IEND
# chunk, which is always the same 12 bytes (empty data, fixed CRC).
END_MARKERS = {
    b"\xff\xd8\xff": ("JPEG", b"\xff\xd9"),
    b"\x89PNG\r\n\x1a\n": ("PNG", b"\x00\x00\x00\x00IEND\xaeB`\x82"),
}
# A JPEG marker: 0xFF, optional fill bytes 0xFF, then a code other than 0x00 (0xFF00 is a
# stuffed 0xFF inside entropy-coded data, not a marker).
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field


def end_marker_format(head: bytes) -> tuple[str, bytes] | None:
    """(format, end bytes) of a JPEG or PNG from its first bytes; None for other formats."""
    for signature, found in END_MARKERS.items():
        if head.startswith(signature):
            return found
    return None


def _jpeg_end(data: bytes) -> int | None:
    # Walk the segments by their lengths (so a thumbnail's end marker inside an APPn segment is
    # skipped) and the entropy-coded data marker by marker, up to the first EOI. Pillow does not
    # tell where the data it decoded ends, hence this walk.
    position = 2
    while (match := _JPEG_MARKER.search(data, position)) is not None:
        code, position = match.group(1)[0], match.end()
        if code == 0xD9:
            return position
        if code not in _JPEG_STANDALONE:
            position += int.from_bytes(data[position:position + 2], "big")
    return None


def _png_end(data: bytes) -> int | None:
    # Chunks: 4-byte length, 4-byte type, data, 4-byte CRC; IEND is the last one.
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        position += 12 + length
        if kind == b"IEND":
            return position if position <= len(data) else None
    return None


def trailing_bytes(data: bytes) -> int:
    """How many bytes follow the end of a JPEG's or PNG's own data (its EOI marker or IEND
    chunk); 0 for other formats, whose decoder alone judges them. Raises :class:`InvalidImage`
    when a JPEG or PNG has no end (a cut-short download). A file that ends with its end marker
    is taken as ending there without walking it (what nearly every file does)."""
    found = end_marker_format(data[:8])
    if found is None:
        return 0
    kind, end = found
    if data.endswith(end):
        return 0
    position = _jpeg_end(data) if kind == "JPEG" else _png_end(data)
    if position is None:
        raise InvalidImage(missing_end_reason(kind))
    return len(data) - position


def missing_end_reason(kind: str) -> str:
    return "JPEG without end marker (truncated?)" if kind == "JPEG" else "PNG without IEND chunk (truncated?)"


def _preview(data: bytes) -> str:
    head = data[:16].decode("latin-1")
    return repr("".join(ch if ch.isprintable() else "." for ch in head))


def inspect_image(data: bytes, rules: ImageRules = ImageRules()) -> ImageInfo:
    """Validate ``data`` without keeping the decoded pixels. Raises :class:`InvalidImage`."""
    image, trailing = _open_checked(data, rules)
    return ImageInfo(format=image.format or "", width=image.width, height=image.height,
                     trailing_bytes=trailing)


def _open_checked(data: bytes, rules: ImageRules) -> tuple[Image.Image, int]:
    """Open, check header facts (format, size, pixel count), find the end of a JPEG's or PNG's
    data, verify structure, then open a fresh copy for decoding (``verify`` leaves the image
    unusable) and decode it fully so a truncated file is caught here and not later. Returns the
    decoded image and the count of bytes after its end marker."""
    if not data:
        raise InvalidImage("empty body")
    if len(data) > rules.max_bytes:
        raise InvalidImage(f"too large: {len(data)} bytes > {rules.max_bytes} bytes")
    header = _open_header(data)
    if header.format not in ALLOWED_FORMATS:
        raise InvalidImage(f"unsupported image format {header.format}")
    width, height = header.size
    if width * height > rules.max_pixels:
        raise InvalidImage(
            f"too many pixels: {width}x{height} > {rules.max_pixels} (decompression bomb?)"
        )
    if max(width, height) > rules.max_side:
        raise InvalidImage(f"too large: {width}x{height}, a side > {rules.max_side} px")
    if min(width, height) < rules.min_side:
        raise InvalidImage(f"too small: {width}x{height}, shorter side < {rules.min_side} px")
    if max(width, height) > rules.max_aspect * min(width, height):
        raise InvalidImage(f"absurd shape: {width}x{height}, sides more than {rules.max_aspect:g}:1")
    try:
        trailing = trailing_bytes(data)
    except InvalidImage as exc:  # worded as the decoder's own failures are
        raise InvalidImage(f"corrupt image: {exc.reason}") from exc
    try:
        header.verify()
    except Exception as exc:  # Pillow raises many types for broken structure
        raise InvalidImage(f"corrupt image: {exc}") from exc
    image = _open_header(data)
    if image.format == "JPEG" and rules.target_short_side:
        # Decode at the smallest DCT scale that still covers the target: much faster.
        scale = min(width, height) / rules.target_short_side
        if scale >= 2:
            image.draft("RGB", (int(width / scale) + 1, int(height / scale) + 1))
    try:
        image.load()
    except Exception as exc:
        raise InvalidImage(f"corrupt image: {exc}") from exc
    if rules.target_short_side:
        # Formats without a reduced decode (PNG, WebP, ...) are shrunk by a whole factor at
        # once, so the conversions that follow copy a small picture, not the full one.
        factor = min(image.width, image.height) // rules.target_short_side
        if factor >= 2 and image.mode in ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"):
            info, fmt = image.info, image.format
            image = image.reduce(factor)
            image.info, image.format = info, fmt
    return image, trailing


def _open_header(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"not an image (starts with {_preview(data)})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"too many pixels (decompression bomb?): {exc}") from exc
    except Exception as exc:
        raise InvalidImage(f"unreadable image: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas of product cut-outs become white, as shops display them.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def prepare_image(data: bytes, rules: ImageRules = ImageRules()) -> bytes:
    """Validate, convert to RGB, resize so the shorter side is ``rules.target_short_side``
    and re-encode as JPEG. Raises :class:`InvalidImage` with the reason on bad input."""
    image = _to_rgb(_open_checked(data, rules)[0])
    target = rules.target_short_side
    if target:
        width, height = image.size
        scale = target / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=rules.jpeg_quality, optimize=False)
    return out.getvalue()


def check_prepared(data: bytes, rules: ImageRules = ImageRules()) -> ImageInfo:
    """Check bytes that :func:`prepare_image` should have produced (e.g. read back from a
    cache or a stream): a decodable JPEG whose shorter side is the target size."""
    info = inspect_image(data, rules)
    if info.format != "JPEG":
        raise InvalidImage(f"expected JPEG, got {info.format}")
    if rules.target_short_side and min(info.width, info.height) != rules.target_short_side:
        raise InvalidImage(
            f"shorter side is {min(info.width, info.height)} px, expected {rules.target_short_side}"
        )
    return info


# Re-checking bytes that were prepared earlier (cache, result stream): any size the crawler
# was configured to produce is fine, but the bytes must be a whole, decodable JPEG.
STORED_RULES = ImageRules(target_short_side=0)


def keep_valid_jpegs(images: list[bytes], rules: ImageRules = STORED_RULES) -> tuple[list[bytes], int]:
    """(the images that decode fully as JPEG under ``rules``, in order; how many did not)."""
    kept = []
    for data in images:
        try:
            if inspect_image(data, rules).format != "JPEG":
                continue
        except InvalidImage:
            continue
        kept.append(data)
    return kept, len(images) - len(kept)
