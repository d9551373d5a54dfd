"""`cnclip import-cache`: the prototype's folders become cache entries; placeholders, the fail
picture and broken files are skipped and reported."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from services.trainer.online.cache_import import folder_key, import_prototype_cache
from services.trainer.online.sources import make_source
from shared.image_cache import ImageCache

REPO_ROOT = Path(__file__).resolve().parents[3]
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20), (20, 20, 20)]


def _jpeg(colour, size=(120, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=92)
    return out.getvalue()


FAIL = _jpeg((128, 128, 128), (100, 100))  # the prototype's "fail" picture


def _mean_colour(data: bytes) -> tuple[int, ...]:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((1, 1), Image.Resampling.BOX)
    return image.getpixel((0, 0))


def _close(a, b, tolerance=12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


QUERIES = ["夏季紫色格子裤子", "红色鞋 条纹款", "新款纯色白色连衣裙 包邮", "瓶子橙色格子",
           "热卖红色纯色图案瓶子", "简约条纹风格粉色帽子", "蓝色，波点杯子！", "黑色（纯色）包",
           "绿色 星星 T恤"]


@pytest.fixture()
def prototype(tmp_path):
    """A prototype cache for QUERIES plus the texts file naming them."""
    root = tmp_path / "Online-CNCLIP" / "valid"
    texts = tmp_path / "valid_texts.jsonl"
    texts.write_text("".join(json.dumps({"text_id": i, "text": q, "image_ids": []}, ensure_ascii=False)
                             + "\n" for i, q in enumerate(QUERIES)), encoding="utf-8")
    for i, query in enumerate(QUERIES):
        name = "".join(ch for ch in query if ch not in " ，！（）")
        folder = root / name
        folder.mkdir(parents=True)
        for n in (1, 2, 3):
            # Every product picture is its own (the size tells them apart).
            (folder / f"{n}.jpg").write_bytes(_jpeg(COLOURS[(i + n) % len(COLOURS)], (120 + i, 90 + n)))
        (folder / "0_1.jpg").write_bytes(_jpeg((255, 255, 255)))  # placeholder
        if i < 6:
            (folder / "4.jpg").write_bytes(FAIL)  # failed download: the fail picture copied in
    (root / QUERIES[0]).joinpath("5.jpg").write_bytes(b"<html>blocked</html>")
    (root / QUERIES[1].replace(" ", "")).joinpath("fail.jpg").write_bytes(_jpeg((1, 2, 3)))
    (root / "不在文本里的查询").mkdir()
    (root / "不在文本里的查询" / "1.jpg").write_bytes(_jpeg((9, 9, 9)))
    only_placeholders = root / QUERIES[8].replace(" ", "")
    for p in only_placeholders.glob("[1-9].jpg"):
        p.unlink()
    return root, texts


def test_folder_names_match_their_queries():
    assert folder_key("蓝色，波点 杯子！") == folder_key("蓝色波点杯子")
    assert folder_key("Ｔ恤　红色") == folder_key("t恤红色")
    assert folder_key("红色杯子") != folder_key("蓝色杯子")


def test_the_cli_imports_and_reports_what_it_skipped(prototype, tmp_path):
    root, texts = prototype
    data_root = tmp_path / "data"
    env = {**os.environ, "CNCLIP_DATA_ROOT": str(data_root)}
    done = subprocess.run([sys.executable, "-m", "services.trainer.cli", "import-cache", "--from", str(root),
                           "--texts", str(texts), "--split", "valid"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["cache_dir"] == str(data_root / "online_cache")
    assert summary["folders"] == 10 and summary["imported"] == 8 and summary["images"] == 24
    assert summary["unmatched_folders"] == ["不在文本里的查询"]
    assert summary["empty_folders"] == [QUERIES[8].replace(" ", "")]
    assert summary["skipped_by_reason"] == {"placeholder": 9, "fail picture": 7, "invalid": 1}
    assert len(summary["fail_pictures"]) == 2  # the shared one and the one named fail.jpg

    source = make_source("cache", cache_dir=data_root / "online_cache", job_id="j", rank=0, n_images=5,
                         window=1, wait_s=0, redis_url=None, request_ttl_s=1, guard=None)
    source.start_pass("valid", QUERIES, 0)
    got = source.take(QUERIES)
    source.end_pass()
    for i, query in enumerate(QUERIES[:8]):
        images = got[query].images
        assert len(images) == 3, query
        # In the prototype's order, normalised like crawled pictures (shorter side 224).
        for n, data in zip((1, 2, 3), images):
            assert _close(_mean_colour(data), COLOURS[(i + n) % len(COLOURS)]), (query, n)
            assert min(Image.open(io.BytesIO(data)).size) == 224
    assert got[QUERIES[8]].reason == "not_cached"


def test_existing_entries_are_kept_unless_overwrite(prototype, tmp_path):
    root, texts = prototype
    cache = ImageCache(tmp_path / "cache", "test")
    cache.put(QUERIES[2], [_jpeg((1, 1, 1))])
    first = import_prototype_cache(root, texts, "test", tmp_path / "cache")
    assert first.already_cached == 1 and first.imported == 7
    assert len(cache.read(QUERIES[2]).images) == 1
    again = import_prototype_cache(root, texts, "test", tmp_path / "cache", overwrite=True)
    assert again.imported == 8 and len(cache.read(QUERIES[2]).images) == 3


def test_a_fail_picture_given_explicitly_is_skipped_even_in_one_folder(tmp_path):
    root = tmp_path / "proto"
    (root / "红色杯子").mkdir(parents=True)
    (root / "红色杯子" / "1.jpg").write_bytes(FAIL)
    (root / "红色杯子" / "2.jpg").write_bytes(_jpeg(COLOURS[0]))
    texts = tmp_path / "t.jsonl"
    texts.write_text(json.dumps({"text_id": 1, "text": "红色 杯子"}, ensure_ascii=False) + "\n")
    report = import_prototype_cache(root, texts, "valid", tmp_path / "c", fail_pictures=[FAIL])
    assert report.imported == 1 and report.images == 1
    assert len(ImageCache(tmp_path / "c", "valid").read("红色 杯子").images) == 1


def test_bad_input_exits_2_with_a_message(tmp_path, prototype):
    root, texts = prototype
    bad_texts = tmp_path / "bad.jsonl"
    bad_texts.write_text('{"text_id": 1}\n')
    for args, message in (
        (["--from", str(tmp_path / "missing"), "--texts", str(texts)], "no prototype cache folder"),
        (["--from", str(root), "--texts", str(bad_texts)], "bad.jsonl:1"),
        (["--from", str(root), "--texts", str(tmp_path / "none.jsonl")], "none.jsonl"),
    ):
        done = subprocess.run([sys.executable, "-m", "services.trainer.cli", "import-cache", *args,
                               "--split", "valid", "--cache-dir", str(tmp_path / "c")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    done = subprocess.run([sys.executable, "-m", "services.trainer.cli", "import-cache", "--from", str(root),
                           "--texts", str(texts), "--split", "train"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr
