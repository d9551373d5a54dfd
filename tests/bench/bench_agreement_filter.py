"""How well the agreement filter keeps a query's right pictures, on the shop's own results.

Online learning trains on the pictures a search brings back, and a share of them show the wrong
item (the shop's ``wrong_item_rate``). ``online_keep_images`` keeps the pictures that agree most
with the query's other pictures (``services/trainer/online/agreement.py``); this measures, for
each way of scoring agreement (``--neighbours``: all the others, or the N nearest) and number of
pictures crawled (``--images``), the share of kept pictures that show the right item
(precision) and the share of queries left with wrong pictures only.

Unlike the efficacy grid (``bench_online_efficacy.py``), whose per-set figures move by chance
from one training run to the next, this is deterministic: the pictures are the shop's
(rendered by its own picture store for the queries of each data set's validation split, the
truth from its catalogue), the features those of the offline model the efficacy grid trains
first (tiny, CPU), so a filter can be compared with another on the same pictures.

    .venv/bin/python tests/bench/bench_agreement_filter.py --seeds 0 --wrong-item-rate 0.2,0.5 --images 5,8

The last line of stdout is JSON: per rate, number of pictures and scoring, the precision on
unseen and seen queries (mean over the data sets) and the queries left with wrong pictures only.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.shop.catalog import Catalog  # noqa: E402
from services.shop.images import PictureStore  # noqa: E402
from services.shop.settings import ShopSettings  # noqa: E402
from services.trainer.data.transforms import image_transform  # noqa: E402
from services.trainer.model.checkpoint import load_model  # noqa: E402
from services.trainer.model.features import encode_image  # noqa: E402
from services.trainer.online.agreement import agreeing  # noqa: E402
from shared.synthetic.attributes import ATTRIBUTE_NAMES, parse_query  # noqa: E402
from tests.bench.bench_online_efficacy import Grid, parse_held_out  # noqa: E402


def is_wrong(catalog: Catalog, query: str, index: int) -> bool:
    """Does the shop's picture ``index`` for ``query`` contradict an attribute the query names?"""
    named, shown = parse_query(query), catalog.picture_attrs(query, index)
    return any(getattr(named, a) is not None and getattr(named, a) != getattr(shown, a) for a in ATTRIBUTE_NAMES)


@torch.no_grad()
def features(model, transform, store: PictureStore, query: str, count: int) -> torch.Tensor:
    pixels = torch.stack([transform(Image.open(io.BytesIO(store.jpeg(query, i))).convert("RGB")) for i in range(count)])
    return torch.nn.functional.normalize(encode_image(model, pixels).float(), dim=-1)


def measure(model, queries: list[tuple[str, bool]], rate: float, counts: list[int], keep: int,
            neighbours: list[int | None]) -> list[dict[str, Any]]:
    shop = ShopSettings()
    catalog = Catalog(seed=shop.seed, results_per_query=shop.results_per_query, wrong_item_rate=rate,
                      max_query_chars=shop.max_query_chars)
    store = PictureStore(catalog, size=shop.image_size, quality=shop.jpeg_quality, cache_items=64)
    transform = image_transform(model.config.vision_config.image_size)
    tallies: dict[tuple[int, str, str], list[int]] = {}  # (K, scoring, seen|unseen) -> [kept, right, queries, only wrong]
    for query, seen in queries:
        wrong = [is_wrong(catalog, query, i) for i in range(max(counts))]
        every = features(model, transform, store, query, max(counts))
        for count in counts:
            choices = {"first picture": [0], "every picture": list(range(count))}
            for n in neighbours:
                choices[f"neighbours={n or 'all'}"] = agreeing(every[:count], keep, n)
            for scoring, kept in choices.items():
                t = tallies.setdefault((count, scoring, "seen" if seen else "unseen"), [0, 0, 0, 0])
                t[0] += len(kept)
                t[1] += sum(not wrong[i] for i in kept)
                t[2] += 1
                t[3] += all(wrong[i] for i in kept)
    return [{"wrong_item_rate": rate, "images": count, "scoring": scoring, "queries": group,
             "precision": round(right / kept, 3), "only_wrong": round(only / n, 3), "n": n}
            for (count, scoring, group), (kept, right, n, only) in sorted(tallies.items())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="data set seeds")
    parser.add_argument("--held-out", default="colour=purple,category=shoe;colour=green,category=mug,pattern=striped;"
                                              "colour=orange,category=bag", help="held-out sets, ';' between sets")
    parser.add_argument("--wrong-item-rate", default="0.2,0.5")
    parser.add_argument("--images", default="5,8", help="pictures crawled per query (online_images)")
    parser.add_argument("--keep", type=int, default=3, help="online_keep_images")
    parser.add_argument("--neighbours", default="none,1,2,3", help="online_agreement_neighbours values")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        held_sets = parse_held_out(args.held_out)
        rates = [float(r) for r in args.wrong_item_rate.split(",") if r.strip()]
        counts = [int(k) for k in args.images.split(",") if k.strip()]
        neighbours = [None if n.strip() == "none" else int(n) for n in args.neighbours.split(",") if n.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    if not seeds or not rates or not counts or min(counts) < 1 or args.keep < 1:
        parser.error("give seeds, rates and positive numbers of images")

    # The efficacy grid's data sets and offline model, with its default sizes.
    grid_args = argparse.Namespace(n_train=512, n_valid=64, n_test=128, image_size=64, context_length=24,
                                   batch_size=32, steps=200, lr=0.003, train_seed=0, rows=None, noise_floor=False)
    workdir = Path(tempfile.mkdtemp(prefix="bench-agreement-"))
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        grid = Grid(grid_args, workdir)
        for seed in seeds:
            for held in held_sets:
                data = grid.make(seed, held)
                checkpoint, _ = grid.train(data, "offline", "epoch")
                model, _ = load_model(checkpoint)
                model.eval()
                manifest = json.loads((data.root / "data" / "manifest.json").read_text(encoding="utf-8"))
                queries = list({t["text"]: t["seen"] for t in manifest["texts"]["valid"]}.items())
                for rate in rates:
                    for row in measure(model, queries, rate, counts, args.keep, neighbours):
                        rows.append({"data": data.label, **row})
                        print(json.dumps(rows[-1], ensure_ascii=False), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary: dict[str, Any] = {}
    for row in rows:
        key = f"rate={row['wrong_item_rate']:g} images={row['images']} {row['scoring']}"
        entry = summary.setdefault(key, {})
        entry.setdefault(row["queries"], []).append(row)
    result = {
        "benchmark": "agreement_filter", "keep": args.keep, "data_sets": len(seeds) * len(held_sets),
        "precision": {key: {group: {"precision_mean": round(statistics.fmean(r["precision"] for r in members), 3),
                                    "precision_worst": min(r["precision"] for r in members),
                                    "only_wrong_mean": round(statistics.fmean(r["only_wrong"] for r in members), 3)}
                            for group, members in groups.items()}
                      for key, groups in summary.items()},
        "wall_s": round(time.monotonic() - started, 1), "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
