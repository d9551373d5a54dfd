"""Tokenizer throughput: ours against Chinese-CLIP's ``cn_clip.clip.tokenize`` on the same
product titles, in the same process, after checking that both give the same ids.

    .venv/bin/python tests/bench/bench_tokenizer.py [--titles 100000] [--batch 1024] [--seed 0]

Titles are generated the way scraped listings read: the synthetic captions of
``shared.synthetic`` decorated with brand words, SKU and model-number runs (some over 100
characters), private-use icon-font glyphs, emoji, full-width punctuation and sizes. Both sides
get the text through Chinese-CLIP's own preprocessing (lower case, straight quotes).

"ours" starts with an empty word cache (what a fresh DataLoader worker sees); "ours_warm" is a
second pass over the same titles. The one-off Unicode table build is timed apart. The last line
is one JSON object; ``ratio`` = our tokens/s over Chinese-CLIP's (target >= 1.0).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from cn_clip.clip import tokenize as cn_clip_tokenize  # noqa: E402

from services.trainer.basic_tokenizer import translation_tables  # noqa: E402
from services.trainer.tokenizer import load_vocab, normalize_text, tokenize, word_ids  # noqa: E402
from shared.synthetic.attributes import random_attrs  # noqa: E402
from shared.synthetic.captions import make_caption  # noqa: E402

BRANDS = ("Nike", "ADIDAS", "优衣库UNIQLO", "Apple", "华为HUAWEI", "小米Xiaomi", "ZARA", "H&M", "李宁")
FULL_WIDTH = ("【包邮】", "【正品保证】", "「新款」", "（现货）", "！", "？", "，", "；", "：", "～", "“爆款”")
EMOJI = ("😀", "🔥", "👍🏻", "🇨🇳", "❤️", "✨", "🎁", "👗")
SKU_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
SIZES = ("S", "M", "L", "XL", "XXL", "500ml", "1.5L", "36码", "42码", "2024新款", "¥99.00", "3件套")


def make_title(rng: random.Random) -> str:
    parts = [make_caption(random_attrs(rng), rng)]
    if rng.random() < 0.6:
        parts.insert(0, rng.choice(BRANDS))
    if rng.random() < 0.5:
        parts.insert(0, rng.choice(FULL_WIDTH))
    if rng.random() < 0.6:
        # Model numbers and SKUs, glued to letters or to the word before; now and then a long one.
        length = rng.randint(101, 200) if rng.random() < 0.03 else rng.randint(4, 24)
        sku = "".join(rng.choice(SKU_CHARS) for _ in range(length))
        parts.append(rng.choice(("型号", "货号:", "", "款号-")) + sku)
    if rng.random() < 0.3:
        parts.append(chr(rng.randint(0xE600, 0xE6FF)))  # icon-font glyph from the page
    if rng.random() < 0.3:
        parts.append(rng.choice(EMOJI))
    parts.extend(rng.choice(SIZES) for _ in range(rng.randint(0, 3)))
    if rng.random() < 0.4:
        parts.append(rng.choice(FULL_WIDTH))
    return rng.choice(("", " ", "  ")).join(parts)


def timed(function, batches):
    started = time.perf_counter()
    outputs = [function(batch) for batch in batches]
    return time.perf_counter() - started, torch.cat(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--titles", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--context-length", type=int, default=52)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    titles = [make_title(rng) for _ in range(args.titles)]
    batches = [titles[i:i + args.batch] for i in range(0, len(titles), args.batch)]

    started = time.perf_counter()
    translation_tables()
    load_vocab()
    setup_s = time.perf_counter() - started

    def ours(batch):
        return tokenize(batch, args.context_length)[0]

    def theirs(batch):
        # Chinese-CLIP's datasets preprocess each text this way before tokenize().
        return cn_clip_tokenize([normalize_text(text) for text in batch], args.context_length)

    word_ids.cache_clear()
    ours_s, our_ids = timed(ours, batches)
    ours_warm_s, _ = timed(ours, batches)
    cn_clip_s, their_ids = timed(theirs, batches)
    if not torch.equal(our_ids, their_ids):
        rows = (our_ids != their_ids).any(dim=1).nonzero().flatten().tolist()
        raise SystemExit(f"ids differ on {len(rows)} titles, e.g. {titles[rows[0]]!r}")
    tokens = int((our_ids != 0).sum())

    result = {
        "benchmark": "tokenizer",
        "titles": args.titles,
        "tokens": tokens,
        "context_length": args.context_length,
        "table_build_s": round(setup_s, 3),
        "cn_clip_tokens_per_s": round(tokens / cn_clip_s),
        "ours_tokens_per_s": round(tokens / ours_s),
        "ours_warm_tokens_per_s": round(tokens / ours_warm_s),
        "ratio": round(cn_clip_s / ours_s, 3),
        "ratio_warm": round(cn_clip_s / ours_warm_s, 3),
        "target_ratio": 1.0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
