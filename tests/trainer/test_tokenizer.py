"""Token ids equal Chinese-CLIP's for the same (normalised) text: every code point, long words,
scraped-title oddities."""
from __future__ import annotations

import importlib
import random

import pytest
import torch

from services.trainer.tokenizer import (
    RESOURCES_DIR,
    get_tokenizer,
    normalize_text,
    tokenize,
)

cn_clip = importlib.import_module("cn_clip.clip")

TEXTS = [
    "红色连衣裙",
    "一件蓝色的、带条纹的短袖T恤，适合夏天穿！",
    "Apple iPhone 15 Pro Max 256GB 手机壳",
    "“网红”同款 “ins风” 杯子",
    "‘单引号’ 和 「直角引号」 以及 《书名号》",
    "ＡＢＣ全角字母１２３ and ＭＩＸＥＤ",
    "café naïve résumé CRÈME brûlée",
    "emoji 😀🎉 以及 ♥ ★ 符号",
    "tab\tnew\nline  多个   空格",
    "日本語のテキストとカタカナ",
    "数字 3.1415 和 100% 以及 $9.99 #hashtag @user",
    "",
    "   ",
    "unbelievablyLongEnglishWordThatWordPieceMustSplitIntoManyPieces",
    "很长的文本" * 30,
    "long english text " * 20,
    "图标\ue600字体\uf8ff 私用区 \U000f0001 字符",                  # private-use glyphs stay [UNK]
    "扩展\U0002b820\U0002b91f区 a\U0002b8ffb",                     # CJK Extension E is CJK
    "软\u00ad连字符 零宽\u200d连接 \ufeff字节序 \u2028行 \u2029段",   # format chars, separators
    "ΑΣ ΟΔΟΣ.b Σ İstanbul ǅ ﬁ ß",                                    # final sigma, special case maps
    "a\u0301\u0327b 한국어 각 \u1100\u1161",                          # marks, Hangul (NFD)
    "【包邮】「正品」『特价』（新款）！？；：“引号” ¥99.00 ＃话题 ～",    # full-width punctuation
    "型号ABC123DEF456GHI789JKL012MNO345PQR678STU901VWX234YZ567-X 😀👍🏻🇨🇳",  # SKU, emoji
    "lone \ud800 surrogate a\udfffb",
]


def reference_ids(texts, context_length=52):
    return cn_clip.tokenize([normalize_text(t) for t in texts], context_length=context_length)


def test_vocabulary_is_chinese_clips():
    from pathlib import Path

    ours = (RESOURCES_DIR / "vocab.txt").read_bytes()
    assert ours == (Path(cn_clip.__file__).parent / "vocab.txt").read_bytes()
    assert ours.count(b"\n") == 21128 == len(get_tokenizer().vocab)


@pytest.mark.parametrize("context_length", [52, 24, 2])
def test_ids_equal_chinese_clip(context_length):
    input_ids, attention_mask = tokenize(TEXTS, context_length=context_length)
    assert input_ids.dtype == attention_mask.dtype == torch.long
    assert input_ids.shape == attention_mask.shape == (len(TEXTS), context_length)
    assert torch.equal(input_ids, reference_ids(TEXTS, context_length))
    assert torch.equal(attention_mask, (input_ids != 0).long())


def test_known_tokens_are_not_unknown():
    input_ids, _ = tokenize(["红色连衣裙 hello"])
    unk = get_tokenizer().unk_token_id
    assert input_ids[0, 0] == 101 and (input_ids[0] == 102).sum() == 1
    assert unk not in input_ids[0, :7].tolist()


def test_structure_cls_sep_and_truncation():
    input_ids, attention_mask = tokenize(["很长的文本" * 30, ""], context_length=12)
    assert input_ids[0, 0] == 101 and input_ids[0, -1] == 102 and attention_mask[0].all()
    assert input_ids[1, :2].tolist() == [101, 102] and attention_mask[1].sum() == 2


def test_lower_case_and_curly_quotes():
    assert normalize_text("“ABC”") == '"abc"'
    assert torch.equal(tokenize("“ABC” Def")[0], tokenize('"abc" def')[0])
    # Without normalisation Chinese-CLIP's tokenizer would keep the curly quotes as other tokens.
    assert not torch.equal(tokenize("“x”")[0], cn_clip.tokenize(["“x”"]))


def test_random_texts_equal_chinese_clip():
    rng = random.Random(7)
    alphabet = list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严ABCDEFGHIJabcdefghij0123456789 ,.!?，。！？、“”‘’（）()-—…")
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(200)]
    assert torch.equal(tokenize(texts)[0], reference_ids(texts))


def test_scraped_title_oddities_get_chinese_clips_ids():
    unk = get_tokenizer().unk_token_id
    # A private-use glyph is one [UNK] of its own, not deleted.
    ids = tokenize("红\ue600色")[0][0, :5].tolist()
    assert ids == reference_ids(["红\ue600色"])[0, :5].tolist() and ids[2] == unk
    # CJK Extension E characters are split off like other ideographs: "a", [UNK], "b".
    ids = tokenize("a\U0002b820b")[0][0, :5].tolist()
    assert ids == reference_ids(["a\U0002b820b"])[0, :5].tolist() and ids[2] == unk and ids[4] == 102


def _groups(code_points):
    return " ".join(f"a{chr(cp)}b" for cp in code_points)


def test_every_code_point_between_two_letters_equals_chinese_clip():
    """Each code point 0..0x2FFFF, placed between two letters. Many code points share one
    text (groups separated by spaces) so the comparison takes seconds, not minutes."""
    per_text, context_length = 128, 1024
    starts = range(0, 0x30000, per_text)
    texts = [_groups(range(start, min(start + per_text, 0x30000))) for start in starts]
    ours = tokenize(texts, context_length=context_length)[0]
    theirs = reference_ids(texts, context_length)
    assert (ours[:, -1] == 0).all() and (theirs[:, -1] == 0).all()  # nothing was cut off
    differing = [start for start, a, b in zip(starts, ours, theirs) if not torch.equal(a, b)]
    # Name the code points that differ, not only the group of them.
    bad = [f"U+{cp:04X}" for start in differing for cp in range(start, start + per_text)
           if not torch.equal(tokenize(_groups([cp]))[0], reference_ids([_groups([cp])]))]
    assert not differing, f"{len(bad)} code points tokenise differently: {bad[:50]}"


def test_long_unbroken_words_split_as_chinese_clip():
    rng = random.Random(11)
    sku = "abcdefghjkmnpqrstuvwxyz0123456789"
    words = []
    for length in (99, 100, 101, 150, 199, 200, 201, 250):
        words.append("".join(rng.choice(sku) for _ in range(length)))
        words.append(("型号" if length % 2 else "") + "x1" * (length // 2))
        words.append(("unbelievable" * 25)[:length])
    ours = tokenize(words, context_length=256)[0]
    assert torch.equal(ours, reference_ids(words, 256))
    unk = get_tokenizer().unk_token_id
    lengths = [len(word) for word in words]
    # Up to 200 characters a word is split into pieces; longer ones are a single [UNK].
    assert all((ours[i, 1:-1] != 0).sum() > 2 for i, n in enumerate(lengths) if n <= 200 and not words[i].startswith("型"))
    assert all(ours[i, 1:3].tolist() == [unk, 102] for i, n in enumerate(lengths) if n > 200 and words[i][0] != "型")


def test_tokenizer_is_cached_and_bad_input_is_refused():
    assert get_tokenizer() is get_tokenizer()
    with pytest.raises(TypeError, match="text 1"):
        tokenize(["ok", 5])
    with pytest.raises(ValueError, match="context_length"):
        tokenize(["ok"], context_length=1)
