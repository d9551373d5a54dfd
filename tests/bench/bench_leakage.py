"""Leakage guard: does the threshold separate gallery copies from other products, and how fast
is the vectorised test against a gallery of realistic size?

Separation (synthetic set, shared/synthetic): gallery pictures at ``--size`` px; each copy is
a re-encode and/or resize of one (as a shop and the crawler would serve it: 224 and 300 px,
JPEG quality 50-90); "others" are different products rendered with other seeds. Reported:
the largest copy distance, the smallest distance of another product to any gallery picture,
and the margins to the threshold.

Speed: a gallery of ``--gallery`` hashes (the measured ones padded with random hashes);
``LeakageGuard.filter`` per image against the reference run in the same script: the same
distances with a Python loop over gallery hashes (int XOR and bit_count), which is what a
guard without numpy would do. Hashing is timed separately (it is the same in both).

Usage: python tests/bench/bench_leakage.py [--pictures 500] [--size 64] [--gallery 30000]
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.trainer.online.leakage import DEFAULT_THRESHOLD, LeakageGuard, perceptual_hash  # noqa: E402
from shared.synthetic.attributes import random_attrs  # noqa: E402
from shared.synthetic.render import render_product  # noqa: E402


def _jpeg(image: Image.Image, side: int | None = None, quality: int = 90) -> bytes:
    if side:
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pictures", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--gallery", type=int, default=30_000)
    parser.add_argument("--speed-images", type=int, default=40)
    args = parser.parse_args()

    rng = random.Random(0)
    pictures = [render_product(random_attrs(rng), rng, args.size) for _ in range(args.pictures)]
    gallery = [_jpeg(p) for p in pictures]
    guard = LeakageGuard.from_images(gallery)

    variants = ((None, 90), (224, 90), (300, 75), (224, 50))
    copy_distances = [int(guard.distances(_jpeg(p, side, q)).min())
                      for p in pictures[:200] for side, q in variants]
    others = [_jpeg(render_product(random_attrs(rng), rng, args.size)) for _ in range(args.pictures)]
    other_distances = [int(guard.distances(o).min()) for o in others]

    # Speed against a realistic gallery size.
    pad = np.random.default_rng(0).integers(0, 2**63, size=(max(0, args.gallery - len(gallery)), 4),
                                             dtype=np.uint64)
    big = LeakageGuard(list(guard.hashes) + list(pad))
    probes = [_jpeg(p, 224) for p in pictures[:args.speed_images]]
    started = time.perf_counter()
    hashes = [perceptual_hash(p) for p in probes]
    hash_s = (time.perf_counter() - started) / len(probes)
    started = time.perf_counter()
    kept, dropped = big.filter(probes)
    vectorised_s = (time.perf_counter() - started) / len(probes)

    gallery_ints = [int.from_bytes(row.tobytes(), "little") for row in big.hashes]
    reference_probes = probes[: max(1, len(probes) // 8)]  # the loop is slow; fewer suffice
    started = time.perf_counter()
    reference_dropped = 0
    for probe, digest in zip(reference_probes, hashes):
        value = int.from_bytes(perceptual_hash(probe).tobytes(), "little")
        reference_dropped += min((value ^ g).bit_count() for g in gallery_ints) <= DEFAULT_THRESHOLD
    reference_s = (time.perf_counter() - started) / len(reference_probes)
    assert reference_dropped == len(reference_probes) and dropped == len(probes) and not kept

    summary = {
        "threshold_bits": DEFAULT_THRESHOLD,
        "hash_bits": 256,
        "picture_px": args.size,
        "copies": len(copy_distances),
        "max_copy_distance": max(copy_distances),
        "others": len(other_distances),
        "min_other_distance": min(other_distances),
        "other_distance_p1": float(np.percentile(other_distances, 1)),
        "copies_dropped_share": sum(d <= DEFAULT_THRESHOLD for d in copy_distances) / len(copy_distances),
        "others_dropped_share": sum(d <= DEFAULT_THRESHOLD for d in other_distances) / len(other_distances),
        "gallery": len(big),
        "hash_ms_per_image": round(hash_s * 1000, 3),
        "filter_ms_per_image": round(vectorised_s * 1000, 3),
        "reference_loop_ms_per_image": round(reference_s * 1000, 3),
        "speedup_vs_loop": round(reference_s / vectorised_s, 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
