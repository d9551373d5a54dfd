"""Search latency: ``GET /api/search`` of the search service against a hand-rolled server that
answers the same request with a plain torch matmul top-k, both measured here, the same way.

A tiny text tower (a seeded ``tiny`` checkpoint), a gallery of 100,000 synthetic L2-normalised
embeddings written as an exact (flat) index in the index format, CPU. Each server runs in its
own process with the same torch thread count; 20 client threads send ``--requests`` queries
(varied product texts, k=10) as fast as answers come, after a warm-up. Latency is the client's
wall time of each request; the figures are p50, p90, p99 and requests/s, and the service's
p50/p99 over the hand-rolled server's.

Usage: python tests/bench/bench_search.py [--gallery 100000] [--clients 20] [--requests 2000]
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token-0123456789"
WORDS = ["红色", "蓝色", "黑色", "白色", "紫色", "条纹", "格子", "纯色", "连衣裙", "裤子", "鞋子", "包包", "帽子",
         "外套", "夏季", "新款", "简约", "复古"]


def make_index(root: Path, n: int) -> tuple[Path, Path]:
    """A tiny checkpoint and an exact index of ``n`` synthetic rows named ``bench``."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from services.trainer.model import create_model
    from services.trainer.model.checkpoint import save_checkpoint
    from shared.gallery_index import Manifest, build_faiss, checkpoint_sha256, now, write_index

    torch.manual_seed(0)
    model = create_model("tiny", "tiny")
    checkpoint = save_checkpoint(root / "bench.pt", model, None, epoch=1, step=1, name="bench")
    dim = model.config.projection_dim
    rows = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows.astype(np.float16).astype(np.float32)
    index, params = build_faiss(rows, "flat", {})
    manifest = Manifest(checkpoint=str(checkpoint), checkpoint_sha256=checkpoint_sha256(checkpoint),
                        vision_model="tiny", text_model="tiny", context_length=52,
                        gallery=str(root / "no-gallery"), count=n, dim=dim, created=now(), index_kind="flat",
                        params=params, recall_at_10=1.0)
    target = write_index(root / "experiments" / "bench" / "index", list(range(n)), rows, manifest, index)
    return target, checkpoint


def reference_app(index_dir: str):
    """The hand-rolled server: the same model and embeddings, torch matmul + topk, no checks."""
    import numpy as np
    import torch
    from fastapi import FastAPI

    sys.path.insert(0, str(ROOT))
    from services.trainer.model import create_model, encode_text
    from services.trainer.model.checkpoint import load_weights
    from services.trainer.tokenizer import tokenize

    manifest = json.loads((Path(index_dir) / "manifest.json").read_text())
    ids = json.loads((Path(index_dir) / "ids.json").read_text())
    embeddings = torch.from_numpy(np.load(Path(index_dir) / "embeddings.npy").astype(np.float32))
    model = create_model(manifest["vision_model"], manifest["text_model"], attn_implementation="sdpa",
                         precision="fp32").eval()
    load_weights(model, manifest["checkpoint"])
    app = FastAPI()

    @app.get("/api/search")
    def search(index: str, q: str, k: int = 10):
        with torch.inference_mode():
            feat = torch.nn.functional.normalize(encode_text(model, *tokenize([q])), dim=-1)[0]
            scores, rows = (embeddings @ feat).topk(k)
        return {"index": index, "k": k, "results": [{"id": ids[r], "score": float(s)}
                                                    for r, s in zip(rows.tolist(), scores.tolist())]}

    return app


def serve_reference(index_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(reference_app(index_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], env: dict[str, str], url: str) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(url + "/healthz", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"{argv} did not start")


def load(url: str, clients: int, requests: int, headers: dict[str, str]) -> dict:
    import httpx

    texts = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 3)) for i in range(997)]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    per_client = requests // clients

    def client(number: int) -> None:
        mine = []
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            for i in range(per_client):
                q = texts[(number * per_client + i) % len(texts)]
                started = time.perf_counter()
                answer = http.get("/api/search", params={"index": "bench", "q": q, "k": 10})
                mine.append(time.perf_counter() - started)
                if answer.status_code != 200 or len(answer.json()["results"]) != 10:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    for warm in range(clients):  # models loaded, connections open, caches warm
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            http.get("/api/search", params={"index": "bench", "q": WORDS[warm % len(WORDS)], "k": 10})
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    pick = lambda p: round(ms[min(len(ms) - 1, int(p * len(ms)))], 2)  # noqa: E731
    return {"requests": len(ms), "errors": errors[0], "p50_ms": pick(0.50), "p90_ms": pick(0.90),
            "p99_ms": pick(0.99), "mean_ms": round(statistics.fmean(ms), 2), "rps": round(len(ms) / wall, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per server (0: the service's default, services/search/compute.py)")
    parser.add_argument("--serve-reference", nargs=2, metavar=("INDEX_DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_reference:
        import torch

        sys.path.insert(0, str(ROOT))
        from services.search.compute import inference_threads

        torch.set_num_threads(inference_threads(args.threads))  # the count the service picks
        serve_reference(args.serve_reference[0], int(args.serve_reference[1]))
        return {}

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(tmp)
        index_dir, _ = make_index(root, args.gallery)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CNCLIP_DATA_ROOT": str(root), "CNCLIP_CONTROL_TOKEN": TOKEN,
               "CNCLIP_SEARCH_DEVICE": "cpu", "CNCLIP_SEARCH_LOG_LEVEL": "warning",
               "CNCLIP_SEARCH_THREADS": str(args.threads)}
        out: dict = {"bench": "search", "gallery": args.gallery, "clients": args.clients, "device": "cpu",
                     "cpus": os.cpu_count(), "model": "tiny", "index_kind": "flat"}
        port = free_port()
        service = start([sys.executable, "-m", "services.search", "--port", str(port)], env, f"http://127.0.0.1:{port}")
        try:
            out["service"] = load(f"http://127.0.0.1:{port}", args.clients, args.requests,
                                  {"Authorization": f"Bearer {TOKEN}"})
        finally:
            service.terminate()
            service.wait()
        port = free_port()
        reference = start([sys.executable, __file__, "--threads", str(args.threads), "--serve-reference",
                           str(index_dir), str(port)], env, f"http://127.0.0.1:{port}")
        try:
            out["matmul_reference"] = load(f"http://127.0.0.1:{port}", args.clients, args.requests, {})
        finally:
            reference.terminate()
            reference.wait()
    out["p50_ratio_vs_reference"] = round(out["service"]["p50_ms"] / out["matmul_reference"]["p50_ms"], 3)
    out["p99_ratio_vs_reference"] = round(out["service"]["p99_ms"] / out["matmul_reference"]["p99_ms"], 3)
    out["target_p99_ms"] = 50
    out["meets_target"] = out["service"]["p99_ms"] <= 50
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
