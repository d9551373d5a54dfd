from __future__ import annotations

from shared.query import MAX_QUERY_CHARS, normalize_query, query_key


def test_full_width_and_spaces_are_normalised():
    assert normalize_query("  ＡＢＣ１２３\u3000红色   T恤 \n") == "ABC123 红色 T恤"


def test_control_characters_and_nul_are_dropped():
    assert normalize_query("红\x00色\x07T恤") == "红色T恤"


def test_long_queries_are_capped():
    assert len(normalize_query("长" * 500)) == MAX_QUERY_CHARS


def test_keys_are_safe_and_agree_for_equivalent_queries():
    for hostile in ["../../etc/passwd", "a/b", "\x00", "😀" * 10, "x" * 500]:
        key = query_key(hostile)
        assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)
    assert query_key("ＡＢＣ  红色") == query_key("ABC 红色")
    assert query_key("红色") != query_key("蓝色")
