"""Token ids equal Chinese-CLIP's for the same (normalised) text."""
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


def test_tokenizer_is_cached_and_bad_input_is_refused():
    assert get_tokenizer() is get_tokenizer()
    with pytest.raises(TypeError, match="text 1"):
        tokenize(["ok", 5])
    with pytest.raises(ValueError, match="context_length"):
        tokenize(["ok"], context_length=1)
