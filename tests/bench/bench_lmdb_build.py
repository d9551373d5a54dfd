"""LMDB build throughput: ours (every line checked) against Chinese-CLIP's build script (no
checks), same files, same process, alternating runs.

    .venv/bin/python tests/bench/bench_lmdb_build.py [--images 3000] [--size 224] [--repeats 5]

The last line is one JSON object; ``ratio`` = our images/s over theirs (target >= 1.0).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import runpy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.trainer.data.lmdb_build import build_lmdb  # noqa: E402
from shared.synthetic.dataset import make_synthetic_dataset  # noqa: E402


def time_cn_clip(data_dir: Path, out: Path) -> float:
    argv = sys.argv
    sys.argv = ["build_lmdb_dataset", "--data_dir", str(data_dir), "--splits", "train", "--lmdb_dir", str(out)]
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_module("cn_clip.preprocess.build_lmdb_dataset", run_name="__main__")
        return time.perf_counter() - started
    finally:
        sys.argv = argv


def time_ours(data_dir: Path, out: Path, verify: str) -> float:
    started = time.perf_counter()
    report = build_lmdb(data_dir, "train", out, verify=verify)
    elapsed = time.perf_counter() - started
    assert report.ok, report.summary()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        make_synthetic_dataset(data, n_train=args.images, n_valid=1, n_test=1, seed=0, image_size=args.size)
        megabytes = (data / "train_imgs.tsv").stat().st_size / 1e6
        times: dict[str, list[float]] = {"cn_clip": [], "ours": [], "ours_decode": []}
        for _ in range(args.repeats):
            for name in times:
                out = root / name
                shutil.rmtree(out, ignore_errors=True)
                if name == "cn_clip":
                    times[name].append(time_cn_clip(data, out))
                else:
                    times[name].append(time_ours(data, out, "decode" if name == "ours_decode" else "structure"))
        medians = {name: statistics.median(values) for name, values in times.items()}

    result = {
        "benchmark": "lmdb_build",
        "images": args.images,
        "image_size": args.size,
        "tsv_megabytes": round(megabytes, 1),
        "repeats": args.repeats,
        "cn_clip_images_per_s": round(args.images / medians["cn_clip"]),
        "ours_images_per_s": round(args.images / medians["ours"]),
        "ours_decode_images_per_s": round(args.images / medians["ours_decode"]),
        "ratio": round(medians["cn_clip"] / medians["ours"], 3),
        "ratio_decode": round(medians["cn_clip"] / medians["ours_decode"], 3),
        "target_ratio": 1.0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
