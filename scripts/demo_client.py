"""What only the demo needs beside the command-line client (`cnclip jobs`, which submits and
follows its jobs): the stand-in for the phone that scans the crawler's QR code, and recall on
seen and unseen concepts of the synthetic data set. Used by scripts/demo.sh.

    python scripts/demo_client.py concepts DATASET PREDICTIONS recall on seen and unseen concepts
    python scripts/demo_client.py compare DATASET LABEL=PREDICTIONS...  the same, side by side
    python scripts/demo_client.py scan                       plays the phone: scans each waiting
                                                             crawler's QR from /login and confirms it
Reads CNCLIP_CONTROL_PORT, CNCLIP_CONTROL_TOKEN and CNCLIP_SHOP_PORT from the environment."""
from __future__ import annotations

import json
import os
import sys

import httpx


def _client() -> httpx.Client:
    port = os.environ.get("CNCLIP_CONTROL_PORT", "8000")
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                        headers={"Authorization": f"Bearer {os.environ['CNCLIP_CONTROL_TOKEN']}"})


def scan(timeout: float = 120.0) -> int:
    """What a phone does with the QR code on /login: read it (the image the control service
    shows) and confirm the login it names at the shop. The shop's app would do the confirming;
    here its phone endpoint is called directly."""
    import io
    import time

    import zxingcpp
    from PIL import Image

    shop = f"http://127.0.0.1:{os.environ.get('CNCLIP_SHOP_PORT', '8600')}"
    deadline = time.monotonic() + timeout
    with _client() as client:
        while time.monotonic() < deadline:
            ranks = client.get("/api/login").json()
            if ranks and all(r["state"] == "logged_in" for r in ranks):
                print(f"  crawler ranks logged in: {', '.join(str(r['rank']) for r in ranks)}")
                return 0
            for rank in ranks:
                if rank["state"] != "waiting_for_scan":
                    continue
                png = client.get(f"/login/{rank['rank']}/qr.png")
                if png.status_code != 200:
                    continue
                for code in zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content))):
                    token = code.text.rpartition(":")[2]
                    answer = httpx.post(f"{shop}/qr/{token}/confirm", timeout=10)
                    print(f"  scanned rank {rank['rank']}'s QR code: the shop says {answer.status_code}")
            time.sleep(1)
    print("  no crawler rank logged in in time", file=sys.stderr)
    return 1


def _by_concept(dataset: str, predictions: str) -> dict[str, dict]:
    from shared.muge import read_ground_truth, read_predictions, recall_metrics

    root = os.path.join(dataset, "")
    truth = read_ground_truth(root + "test_texts.jsonl")
    predicted = read_predictions(predictions, truth)
    with open(root + "manifest.json", encoding="utf-8") as f:
        seen = {t["text_id"]: t["seen"] for t in json.load(f)["texts"]["test"]}
    out = {}
    for label, wanted in (("seen", True), ("unseen", False)):
        group = {qid: ids for qid, ids in truth.items() if seen.get(qid) == wanted}
        if group:
            out[label] = recall_metrics(group, predicted)
    return out


def compare(dataset: str, labelled: list[str]) -> int:
    """One row per run: R@1 and mean recall on seen and on unseen concepts; for every run after
    the first (the offline model), the share of the first run's seen/unseen gap it closes and
    the mean recall it gains or loses on seen concepts (what the efficacy benchmark reports)."""
    print(f"  {'':40} {'seen R@1':>9} {'seen MR':>8} {'unseen R@1':>11} {'unseen MR':>10} {'gap closed':>11}"
          f" {'seen MR +/-':>12}")
    base = None
    for item in labelled:
        label, _, path = item.partition("=")
        m = _by_concept(dataset, path)
        row = (f"  {label:40} {m['seen']['r1']:9.1f} {m['seen']['mr']:8.1f} "
               f"{m['unseen']['r1']:11.1f} {m['unseen']['mr']:10.1f}")
        if base is None:
            base = m
        else:
            gap = base["seen"]["mr"] - base["unseen"]["mr"]
            closed = (m["unseen"]["mr"] - base["unseen"]["mr"]) / gap if gap > 0 else float("nan")
            row += f" {closed:11.0%} {m['seen']['mr'] - base['seen']['mr']:+12.1f}"
        print(row)
    return 0


def concepts(dataset: str, predictions: str) -> int:
    """Recall on test queries whose attributes all occur in training (seen) and on those
    naming a held-out colour or category (unseen): the gap is what online learning closes."""
    from shared.muge import read_ground_truth, read_predictions, recall_metrics

    root = os.path.join(dataset, "")
    truth = read_ground_truth(root + "test_texts.jsonl")
    predicted = read_predictions(predictions, truth)
    with open(root + "manifest.json", encoding="utf-8") as f:
        seen = {t["text_id"]: t["seen"] for t in json.load(f)["texts"]["test"]}
    for label, wanted in (("seen", True), ("unseen", False)):
        group = {qid: ids for qid, ids in truth.items() if seen.get(qid) == wanted}
        if group:
            m = recall_metrics(group, predicted)
            print(f"  {label:>6} concepts: {m['num_queries']:3d} queries  R@1 {m['r1']:5.1f}  "
                  f"R@5 {m['r5']:5.1f}  R@10 {m['r10']:5.1f}  MR {m['mr']:5.1f}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "concepts":
        return concepts(argv[2], argv[3])
    if len(argv) >= 4 and argv[1] == "compare":
        return compare(argv[2], argv[3:])
    if len(argv) == 2 and argv[1] == "scan":
        return scan()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
