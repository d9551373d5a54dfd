from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from shared.image_validation import (
    ImageRules,
    InvalidImage,
    check_prepared,
    inspect_image,
    prepare_image,
    trailing_bytes,
)


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def photo(width: int = 400, height: int = 300, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (width, height))
    for x in range(0, width, 20):
        for y in range(0, height, 20):
            colour = ((x * 3) % 256, (y * 5) % 256, (x + y) % 256)
            image.paste(colour if mode == "RGB" else colour + (255,), (x, y, x + 20, y + 20))
    return image


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def test_prepare_resizes_shorter_side_and_reencodes_jpeg():
    out = prepare_image(encode(photo(400, 300)), ImageRules(target_short_side=224))
    image = Image.open(io.BytesIO(out))
    assert image.format == "JPEG"
    assert image.size == (299, 224)
    assert check_prepared(out).height == 224


def test_prepare_accepts_png_with_alpha_and_flattens_on_white():
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 0))
    out = prepare_image(encode(rgba, "PNG"))
    image = Image.open(io.BytesIO(out)).convert("RGB")
    assert image.mode == "RGB"
    assert all(channel > 240 for channel in image.getpixel((10, 10)))


def test_large_jpeg_is_decoded_at_reduced_scale_and_still_correct():
    out = prepare_image(encode(photo(3000, 2000)))
    assert Image.open(io.BytesIO(out)).size == (336, 224)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty body"),
    (b"<!DOCTYPE html><html><body>login</body></html>", "not an image"),
    (b"\x00" * 100, "not an image"),
])
def test_garbage_is_refused_with_a_reason(data, reason):
    with pytest.raises(InvalidImage) as info:
        prepare_image(data)
    assert reason in info.value.reason


def test_truncated_jpeg_is_refused():
    data = encode(photo(400, 300), quality=95)
    with pytest.raises(InvalidImage) as info:
        prepare_image(data[: len(data) // 2])
    assert "corrupt" in info.value.reason or "truncated" in info.value.reason


@pytest.mark.parametrize("fmt, extra", [
    ("JPEG", b"\x00ftypmp42" + b"\xff\xd9\x12" * 300),  # a motion photo's video, end markers inside
    ("JPEG", bytes(64)),                                # padding
    ("PNG", b"appended metadata " * 3),
])
def test_bytes_after_the_end_marker_are_information_not_a_fault(fmt, extra):
    clean = encode(photo(400, 300), fmt)
    info = inspect_image(clean + extra)
    assert (info.format, info.trailing_bytes) == (fmt, len(extra))
    assert inspect_image(clean).trailing_bytes == 0
    # The image is the same with or without its tail.
    assert prepare_image(clean + extra) == prepare_image(clean)


def test_trailing_bytes_finds_the_main_image_end_and_refuses_a_missing_one():
    jpeg = encode(photo(400, 300))
    thumbnail = encode(photo(16, 16))
    # A thumbnail (with its own end marker) inside an APP15 segment is skipped over.
    with_thumbnail = jpeg[:2] + b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + jpeg[2:]
    assert trailing_bytes(with_thumbnail + b"tail") == 4
    with pytest.raises(InvalidImage, match="JPEG without end marker"):
        trailing_bytes(with_thumbnail[: len(with_thumbnail) // 2])
    with pytest.raises(InvalidImage, match="PNG without IEND"):
        trailing_bytes(encode(photo(100, 100), "PNG")[:-12])
    # Other formats are left to their decoder.
    assert trailing_bytes(encode(photo(100, 100), "GIF") + b"junk") == 0


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(InvalidImage) as info:
        inspect_image(png_declaring(20_000, 20_000))
    assert "pixels" in info.value.reason
    # Below Pillow's own limit, our cap still applies.
    with pytest.raises(InvalidImage) as info:
        inspect_image(png_declaring(8_000, 8_000), ImageRules(max_pixels=10_000_000))
    assert "too many pixels" in info.value.reason


def test_too_small_and_too_large_are_refused():
    with pytest.raises(InvalidImage, match="too small"):
        prepare_image(encode(photo(40, 300)))
    with pytest.raises(InvalidImage, match="too large"):
        prepare_image(encode(photo(400, 300)), ImageRules(max_bytes=1000))


def test_unsupported_format_is_refused():
    with pytest.raises(InvalidImage, match="unsupported image format"):
        prepare_image(encode(photo(200, 200), "TIFF"))


def test_check_prepared_wants_the_target_size():
    with pytest.raises(InvalidImage, match="expected 224"):
        check_prepared(encode(photo(400, 300)))
    with pytest.raises(InvalidImage, match="expected JPEG"):
        check_prepared(encode(photo(224, 224), "PNG"))
