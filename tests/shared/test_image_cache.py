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
