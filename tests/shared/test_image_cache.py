from __future__ import annotations

import pytest

from shared.image_cache import ImageCache


def test_put_then_get_returns_bytes_in_order_and_records_the_text(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    paths = cache.put("红色 T恤", [b"one", b"two", b"three"], source="shop")
    assert [p.read_bytes() for p in cache.get("红色　T恤")] == [b"one", b"two", b"three"]
    assert paths == cache.get("红色 T恤")
    assert "红色 T恤" in cache and "蓝色 T恤" not in cache
    assert cache.queries() == ["红色 T恤"]


def test_hostile_queries_stay_inside_the_cache(tmp_path):
    cache = ImageCache(tmp_path / "c", "test")
    for q in ["../../escape", "/etc/passwd", "a\x00b", "😀", "长" * 500]:
        for p in cache.put(q, [b"x"]):
            assert (tmp_path / "c" / "test") in p.parents
    assert not (tmp_path / "escape").exists()
    assert len(cache.queries()) == 5


def test_replacing_an_entry_leaves_no_stale_files(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    cache.put("q", [b"a", b"b", b"c"])
    cache.put("q", [b"z"])
    got = cache.get("q")
    assert [p.read_bytes() for p in got] == [b"z"]
    assert sorted(p.name for p in got[0].parent.iterdir()) == ["0.jpg", "meta.json"]
    assert cache.get("never") is None


def test_bad_split_names_are_refused(tmp_path):
    for bad in ["", "../x", ".hidden"]:
        with pytest.raises(ValueError):
            ImageCache(tmp_path, bad)


# ---- validation on read, killed writers --------------------------------------------------
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


def _jpeg(colour: tuple[int, int, int], size: int = 96) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_read_revalidates_and_drops_what_is_broken(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    good = [_jpeg((200, 0, 0)), _jpeg((0, 200, 0)), _jpeg((0, 0, 200))]
    paths = cache.put("红色 T恤", good)
    paths[1].write_bytes(good[1][: len(good[1]) // 2])  # truncated on disk
    paths[2].unlink()                                    # gone
    found = cache.read("红色 T恤")
    assert found.images == [good[0]] and found.invalid == 2
    assert cache.read("never cached") is None


def test_an_entry_whose_meta_is_damaged_counts_as_never_cached(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    paths = cache.put("q", [_jpeg((1, 2, 3))])
    (paths[0].parent / "meta.json").write_text("{not json", encoding="utf-8")
    assert cache.get("q") is None and cache.read("q") is None and cache.queries() == []


_WRITER = """
import sys
from shared.image_cache import ImageCache
cache = ImageCache(sys.argv[1], "valid")
images = [bytes([i]) * 200_000 for i in range(12)]
print("ready", flush=True)
n = 0
while True:
    n += 1
    cache.put("同一个查询", images, n=n)
"""


def _check_whole(cache: ImageCache) -> bool:
    """The entry is either absent or complete: every file named by meta.json, full size."""
    paths = cache.get("同一个查询")
    if paths is None:
        return False
    assert len(paths) == 12
    for i, path in enumerate(paths):
        assert path.read_bytes() == bytes([i]) * 200_000
    return True


def test_a_writer_killed_at_any_moment_leaves_a_whole_entry_or_the_old_one(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    rng = random.Random(0)
    present = 0
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        present += _check_whole(cache) or bool(cache.sweep(min_age_s=0)["restored"])
        assert _check_whole(cache) or present == 0
    assert present > 0, "the writer never completed an entry"
    cache.sweep(min_age_s=0)
    hidden = [p.name for p in cache.dir.glob("*/.*")]
    assert hidden == [] and cache.queries() == ["同一个查询"]


def test_sweep_leaves_young_staging_folders_alone_and_restores_an_orphaned_entry(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    paths = cache.put("q", [b"x"])
    entry = paths[0].parent
    young = entry.parent / ".staging-abc"
    young.mkdir()
    aside = entry.with_name(f".old-{entry.name}-1-2")
    entry.rename(aside)  # as if a writer died between moving the old entry aside and renaming
    assert cache.get("q") is None
    assert cache.sweep(min_age_s=60) == {"staging_removed": 0, "restored": 0, "aside_removed": 0}
    assert cache.sweep(min_age_s=0) == {"staging_removed": 1, "restored": 1, "aside_removed": 0}
    assert [p.read_bytes() for p in cache.get("q")] == [b"x"]
    assert json.loads((entry / "meta.json").read_text())["query"] == "q"


def test_readers_never_see_half_an_entry_while_writers_race(tmp_path):
    cache = ImageCache(tmp_path, "valid")
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "ready"
        seen = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                seen += _check_whole(cache)
            except FileNotFoundError:
                pass  # the entry was replaced between reading meta.json and a file: retry
    finally:
        for w in writers:
            w.kill()
            w.wait()
            w.stdout.close()
    assert seen > 0
