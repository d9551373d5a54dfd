"""Peak memory of a crawler worker's picture path over a hostile picture set.

A fresh worker-like process (tests/crawler/picture_worker.py: the crawler's own downloader,
PictureFetcher and default rules, with its download threads) fetches each set from a hostile
picture host on loopback (tests/hostile_site.py) and reports its peak RSS (VmHWM):

- reference: ordinary product pictures (JPEGs);
- hostile: PNGs declaring 600000x64 and 64x600000 pixels (~40 KB each), 6000x6000 RGBA PNGs
  (36 M pixels, the largest kind the default rules accept), redirect loops, redirects to
  file: and to the cloud metadata address, and a few good pictures in between.

Stated bound: the hostile set's peak stays under BOUND_MB. The largest accepted picture is
144 MB decoded and is held at most twice (RGBA is premultiplied while it is shrunk), one
picture at a time, plus the interpreter. The figure to compare across machines is the ratio
hostile / reference peak.

    .venv/bin/python tests/bench/bench_crawler_memory.py [--rounds 3]

Prints one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.hostile_site import HostileSite  # noqa: E402

WORKER = REPO_ROOT / "tests" / "crawler" / "picture_worker.py"
BOUND_MB = 450.0


def run_worker(urls: list[str]) -> dict:
    done = subprocess.run([sys.executable, str(WORKER), *urls], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="how often each set is repeated")
    args = parser.parse_args()
    with HostileSite() as site:
        reference = [site.url("/good.jpg")] * (8 * args.rounds)
        hostile_round = ["/wide.png", "/tall.png", "/big.png", "/loop", "/good.jpg", "/to-metadata",
                         "/big.png", "/to-file", "/wide.png", "/big.png"]
        hostile = [site.url(p) for p in hostile_round] * args.rounds
        ref = run_worker(reference)
        bad = run_worker(hostile)
    refused = sum(1 for ok, _ in bad["results"] if not ok)
    accepted = len(bad["results"]) - refused
    assert all(ok for ok, _ in ref["results"]), ref
    assert accepted == 4 * args.rounds, bad  # the 6000x6000 pictures and the good one
    ratio = bad["peak_rss_mb"] / ref["peak_rss_mb"]
    print(f"reference peak {ref['peak_rss_mb']} MB over {len(reference)} pictures; hostile peak "
          f"{bad['peak_rss_mb']} MB over {len(hostile)} ({refused} refused); bound {BOUND_MB} MB")
    print(json.dumps({"reference_peak_rss_mb": ref["peak_rss_mb"], "hostile_peak_rss_mb": bad["peak_rss_mb"],
                      "ratio_hostile_to_reference": round(ratio, 2), "bound_mb": BOUND_MB,
                      "within_bound": bad["peak_rss_mb"] < BOUND_MB, "hostile_pictures": len(hostile),
                      "refused": refused}))


if __name__ == "__main__":
    main()
