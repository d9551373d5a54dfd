"""Talks to the control service the way a user's script would: submits a job, follows its
events until it ends, prints the outcome. Used by scripts/demo.sh.

    python scripts/demo_client.py train|predict SPEC_JSON    prints the job id
    python scripts/demo_client.py follow JOB_ID              progress lines, then the result
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


def submit(kind: str, spec: str) -> int:
    with _client() as client:
        response = client.post(f"/jobs/{kind}", json=json.loads(spec))
    if response.status_code >= 400:
        print(f"refused ({response.status_code}): {response.text}", file=sys.stderr)
        return 1
    print(response.json()["id"])
    return 0


def _line(event: dict) -> str | None:
    data, kind = event["data"], event["type"]
    if kind == "train_step":
        return (f"  step {data.get('step')}/{data.get('total_steps')}  loss {data.get('loss', 0):.4f}  "
                f"lr {data.get('lr', 0):.2e}  {data.get('samples_per_s', 0):.0f} samples/s")
    if kind == "validation":
        return (f"  validation @ step {data.get('step')}: R@1 {data.get('r1')}  R@5 {data.get('r5')}  "
                f"R@10 {data.get('r10')}  MR {data.get('mr')}")
    if kind == "online_pass":
        missing = ", ".join(f"{n} {r}" for r, n in (data.get("missing") or {}).items()) or "none"
        return (f"  online pass {data.get('pass_index')} ({data.get('split')}): {data.get('pairs')} crawled pairs "
                f"for {data.get('queries')} queries, {data.get('steps')} steps, missing: {missing}, "
                f"{data.get('wall_s')} s")
    if kind == "online_state" and data.get("state") == "waiting_for_login":
        return "  waiting for a crawler rank to log in (scan its QR code at /login)"
    if kind == "phase":
        return f"  phase: {data.get('name')}"
    if kind == "state":
        return f"  state: {data.get('state')}" + (f" ({data['reason']})" if data.get("reason") else "")
    if kind == "log" and data.get("level") in ("error", "warning"):
        return f"  {data.get('level')}: {data.get('message')}"
    return None


def follow(job_id: str) -> int:
    port = os.environ.get("CNCLIP_CONTROL_PORT", "8000")
    headers = {"Authorization": f"Bearer {os.environ['CNCLIP_CONTROL_TOKEN']}"}
    last_id = None
    with _client() as client:
        while True:
            # The stream ends with the job; if it breaks off earlier, resume after the last event.
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                with httpx.stream("GET", f"http://127.0.0.1:{port}/jobs/{job_id}/events",
                                  headers=headers, timeout=None) as response:
                    for raw in response.iter_lines():
                        if raw.startswith("id:"):
                            last_id = raw[3:].strip()
                        elif raw.startswith("data:"):
                            event = json.loads(raw[5:].strip())
                            line = _line(event) if "type" in event else None
                            if line:
                                print(line, flush=True)
            except httpx.TransportError:
                pass
            job = client.get(f"/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
    print(f"job {job_id}: {job['state']}" + (f" - {job['reason']}" if job["reason"] else ""))
    if job["result"]:
        print(json.dumps(job["result"], indent=2, ensure_ascii=False))
    if job["state"] != "succeeded" and job["error"]:
        print(job["error"])
    return 0 if job["state"] == "succeeded" else 1


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
    """One row per run: R@1 and mean recall on seen and on unseen concepts."""
    print(f"  {'':40} {'seen R@1':>9} {'seen MR':>8} {'unseen R@1':>11} {'unseen MR':>10}")
    for item in labelled:
        label, _, path = item.partition("=")
        m = _by_concept(dataset, path)
        print(f"  {label:40} {m['seen']['r1']:9.1f} {m['seen']['mr']:8.1f} "
              f"{m['unseen']['r1']:11.1f} {m['unseen']['mr']:10.1f}")
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
    if len(argv) == 3 and argv[1] in ("train", "predict"):
        return submit(argv[1], argv[2])
    if len(argv) == 3 and argv[1] == "follow":
        return follow(argv[2])
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
