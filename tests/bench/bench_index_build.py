"""Index build throughput against a prediction's gallery embedding, on the same gallery.

A synthetic MUGE test split (``--images`` pictures, 64 px) and a seeded tiny checkpoint, CPU.
The index build (``services.trainer.index.build.build_index``, what ``cnclip index`` runs) is
timed on its embedding phase (its ``embed_s``) and in full; the prediction's embedding is
``predict.pipeline.load_model`` + ``predict.features.image_features`` as ``cnclip predict``
runs them. Runs alternate, ``--repeats`` each; medians are reported with the ratio of the
index build's images/s over the prediction's (the target: within 10 %).

The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=15)  # runs of a third of a second: medians of many
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import torch

    from services.trainer.data.lmdb_build import build_lmdb
    from services.trainer.data.lmdb_read import GalleryDataset
    from services.trainer.data.transforms import image_transform
    from services.trainer.index.build import build_index
    from services.trainer.index.config import IndexConfig
    from services.trainer.model import create_model, image_resolution
    from services.trainer.model.checkpoint import save_checkpoint
    from services.trainer.predict.features import image_features
    from services.trainer.predict.pipeline import load_model
    from shared.synthetic.dataset import make_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp)
        make_synthetic_dataset(root / "data", 16, 8, args.images, seed=0, image_size=64)
        report = build_lmdb(root / "data", "test", root / "lmdb", on_error="fail")
        assert report.ok, report.summary()
        gallery = root / "lmdb" / "test"
        torch.manual_seed(0)
        checkpoint = save_checkpoint(root / "tiny.pt", create_model("tiny", "tiny"), None, epoch=1, step=1, name="b")
        config = IndexConfig(image_data=str(gallery), resume=str(checkpoint), vision_model="tiny", text_model="tiny",
                             device="cpu", precision="fp32", img_batch_size=args.batch_size,
                             experiments=str(root / "experiments"), name="bench")
        count = len(GalleryDataset(gallery, None))
        index_embed, index_total, predict_embed = [], [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = build_index(config, lambda *a, **k: None)
            index_total.append(time.perf_counter() - started)
            index_embed.append(result["embed_s"])
            started = time.perf_counter()
            model, _ = load_model(checkpoint, config, torch.device("cpu"))
            dataset = GalleryDataset(gallery, image_transform(image_resolution("tiny")))
            embed_started = time.perf_counter()
            image_features(model, dataset, device=torch.device("cpu"), batch_size=args.batch_size, precision="fp32")
            predict_embed.append(time.perf_counter() - embed_started)
        index_rate = count / statistics.median(index_embed)
        predict_rate = count / statistics.median(predict_embed)
        out = {"bench": "index_build", "images": count, "repeats": args.repeats, "device": "cpu", "model": "tiny",
               "index_embed_images_per_s": round(index_rate, 1), "predict_embed_images_per_s": round(predict_rate, 1),
               "index_total_s": round(statistics.median(index_total), 3),
               "ratio_index_over_predict": round(index_rate / predict_rate, 3),
               "within_10_percent": abs(index_rate / predict_rate - 1) <= 0.10}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
