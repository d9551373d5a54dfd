"""The search service (a real uvicorn subprocess) over indexes made by the real `cnclip index`."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from shared.gallery_index import FAISS_FILE, load_index
from tests.fixtures_search import build_index

pytestmark = pytest.mark.timeout(600)


def save_checkpoint(path, seed: int):
    from services.trainer.model import create_model
    from services.trainer.model.checkpoint import save_checkpoint as save

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(path, create_model("tiny", "tiny"), None, epoch=1, step=seed, name=f"tiny-{seed}")


@pytest.fixture(scope="module")
def root(tmp_path_factory, make_synthetic_data):
    """A data root with two good indexes of the synthetic test gallery (two checkpoints)."""
    data = make_synthetic_data()
    root = tmp_path_factory.mktemp("search-root")
    for name, seed in (("alpha", 1), ("beta", 2)):
        checkpoint = save_checkpoint(root / "checkpoints" / f"{name}.pt", seed)
        build_index(root, name, data.lmdb("test"), checkpoint)
    return root, data


@pytest.fixture(scope="module")
def server(root):
    from tests.fixtures_search import SearchServer

    srv = SearchServer(root[0]).start()
    yield srv
    srv.stop()


def reference_top(root, name: str, text: str, k: int) -> list:
    """The same query answered by hand: the checkpoint's text feature against the stored
    float16 embeddings, exact inner product."""
    from services.trainer.model import create_model, encode_text
    from services.trainer.model.checkpoint import load_weights
    from services.trainer.tokenizer import tokenize

    index = load_index(root / "experiments" / name / "index")
    model = create_model("tiny", "tiny", attn_implementation="sdpa", precision="fp32").eval()
    load_weights(model, index.manifest.checkpoint)
    with torch.inference_mode():
        feat = torch.nn.functional.normalize(encode_text(model, *tokenize([text])), dim=-1)
    scores = torch.from_numpy(index.embeddings.astype(np.float32)) @ feat[0]
    return [index.ids[i] for i in scores.topk(k).indices.tolist()]


def test_text_search_answers_what_exact_search_by_hand_does(server, root):
    with server.client() as client:
        for name in ("alpha", "beta"):
            got = client.get("/api/search", params={"index": name, "q": "红色 条纹 连衣裙", "k": 7})
            assert got.status_code == 200, got.text
            body = got.json()
            assert body["index"] == name and body["k"] == 7 and body["query"] == "红色 条纹 连衣裙"
            ids = [r["id"] for r in body["results"]]
            assert ids == reference_top(root[0], name, "红色 条纹 连衣裙", 7)
            scores = [r["score"] for r in body["results"]]
            assert scores == sorted(scores, reverse=True)
        # Two checkpoints rank the same gallery differently: each index uses its own model.
        alpha = client.get("/api/search", params={"index": "alpha", "q": "蓝色鞋子", "k": 20}).json()
        beta = client.get("/api/search", params={"index": "beta", "q": "蓝色鞋子", "k": 20}).json()
        assert [r["id"] for r in alpha["results"]] != [r["id"] for r in beta["results"]]


def test_thumbnails_come_from_the_gallery_small_and_cacheable(server, root):
    from services.trainer.data.lmdb_read import LmdbSplit

    with server.client() as client:
        hit = client.get("/api/search", params={"index": "alpha", "q": "黑色背包", "k": 3}).json()["results"][0]
        thumb = client.get(hit["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert "max-age" in thumb.headers["cache-control"]
        small = Image.open(io.BytesIO(thumb.content))
        original = LmdbSplit(root[1].lmdb("test")).image(hit["id"])
        assert max(small.size) <= 192 and small.size[0] / small.size[1] == pytest.approx(
            original.size[0] / original.size[1], rel=0.05)
        missing = client.get("/api/search/thumbs/alpha/999999999")
        assert missing.status_code == 404 and "999999999" in missing.json()["detail"]


def test_indexes_are_listed(server):
    with server.client() as client:
        listed = client.get("/api/search/indexes").json()["indexes"]
    names = {i["name"]: i for i in listed}
    assert {"alpha", "beta"} <= set(names)
    assert names["alpha"]["count"] > 0 and names["alpha"]["index_kind"] == "flat"


@pytest.mark.parametrize("params,status,words", [
    ({"index": "alpha", "q": ""}, 422, "q is empty"),
    ({"index": "alpha", "q": "   \t "}, 422, "q is empty"),
    ({"index": "alpha", "q": "a" * 10_000}, 422, "10000 characters"),
    ({"index": "alpha", "q": "裙" * 2_000}, 422, "2000 characters"),
    ({"index": "alpha", "q": "red\x00dress"}, 422, "U+0000"),
    ({"index": "alpha", "q": "red\x1b[31m"}, 422, "U+001B"),
    ({"index": "alpha", "q": "dress", "k": 0}, 422, "k: "),
    ({"index": "alpha", "q": "dress", "k": 1001}, 422, "k: "),
    ({"index": "alpha", "q": "dress", "k": "ten"}, 422, "k: "),
    ({"index": "nowhere", "q": "dress"}, 404, "no index named 'nowhere'"),
    ({"index": "../etc", "q": "dress"}, 404, "not an index name"),
    ({"q": "dress"}, 422, "index: "),
])
def test_bad_queries_are_refused_naming_the_problem(server, params, status, words):
    with server.client() as client:
        got = client.get("/api/search", params=params)
    assert got.status_code == status, got.text
    assert words in got.json()["detail"]


def test_only_the_control_token_is_trusted(server):
    import httpx

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {server.token}"}):
        got = httpx.get(server.base_url + "/api/search", params={"index": "alpha", "q": "dress"}, headers=headers)
        assert got.status_code == 401
    health = httpx.get(server.base_url + "/healthz")
    assert health.status_code == 200
    from services.search.compute import inference_threads

    assert health.json()["threads"] == inference_threads(0)


def _jpeg(size=(120, 90), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def test_picture_search_and_hostile_pictures(server):
    with server.client() as client:
        good = client.post("/api/search/image", params={"index": "alpha", "k": 4}, content=_jpeg())
        assert good.status_code == 200, good.text
        assert len(good.json()["results"]) == 4
        bomb = io.BytesIO()
        Image.new("1", (30000, 30000)).save(bomb, format="PNG")  # a few KB declaring 900M pixels
        for body, words in ((b"", "no picture"), (b"<html>not a picture</html>", "unusable picture"),
                            (_jpeg()[:200], "unusable picture"), (_jpeg(size=(20, 20)), "unusable picture"),
                            (bomb.getvalue(), "unusable picture")):
            got = client.post("/api/search/image", params={"index": "alpha"}, content=body)
            assert got.status_code == 422 and words in got.json()["detail"], (words, got.text)
        big = client.post("/api/search/image", params={"index": "alpha"}, content=b"\xff" * (11 * 1024 * 1024))
        assert big.status_code == 413
        # Still serving after all that.
        assert client.post("/api/search/image", params={"index": "alpha"}, content=_jpeg()).status_code == 200


def test_broken_indexes_are_named_and_the_others_keep_serving(server, root):
    data_root, data = root
    source = data_root / "experiments" / "alpha" / "index"
    broken = {}
    # A checkpoint that no longer exists.
    gone = save_checkpoint(data_root / "checkpoints" / "gone.pt", 3)
    build_index(data_root, "gone", data.lmdb("test"), gone)
    gone.unlink()
    broken["gone"] = "no longer exists"
    # A checkpoint replaced by another since the index was built.
    swapped = save_checkpoint(data_root / "checkpoints" / "swapped.pt", 4)
    build_index(data_root, "swapped", data.lmdb("test"), swapped)
    save_checkpoint(swapped, 5)
    broken["swapped"] = "changed since the index was built"
    # A corrupt FAISS file.
    shutil.copytree(source, data_root / "experiments" / "corrupt" / "index")
    (data_root / "experiments" / "corrupt" / "index" / FAISS_FILE).write_bytes(b"\x00" * 64)
    broken["corrupt"] = FAISS_FILE
    # A manifest naming a model the checkpoint does not fit.
    shutil.copytree(source, data_root / "experiments" / "misfit" / "index")
    manifest = data_root / "experiments" / "misfit" / "index" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "vision_model": "ViT-B-32"}))
    broken["misfit"] = "does not fit"
    with server.client() as client:
        for name, words in broken.items():
            got = client.get("/api/search", params={"index": name, "q": "dress"})
            assert got.status_code == 409 and words in got.json()["detail"], (name, got.text)
            assert client.get("/api/search", params={"index": "alpha", "q": "dress"}).status_code == 200
        listed = {i["name"] for i in client.get("/api/search/indexes").json()["indexes"]}
        assert set(broken) <= listed


def test_memory_budget_unloads_the_least_recently_used(root, search_server_factory):
    server = search_server_factory(root[0], env={"CNCLIP_SEARCH_MEMORY_BUDGET_MB": "1"})
    with server.client() as client:
        for name in ("alpha", "beta", "alpha"):
            assert client.get("/api/search", params={"index": name, "q": "dress"}).status_code == 200
            assert client.get("/healthz").json()["loaded"] == [name]


def test_a_rebuilt_index_is_served_fresh(root, search_server_factory):
    data_root, data = root
    checkpoint = save_checkpoint(data_root / "checkpoints" / "fresh.pt", 6)
    build_index(data_root, "fresh", data.lmdb("test"), checkpoint)
    server = search_server_factory(data_root)
    with server.client() as client:
        first = client.get("/api/search", params={"index": "fresh", "q": "白色", "k": 10}).json()
        save_checkpoint(checkpoint, 7)
        build_index(data_root, "fresh", data.lmdb("test"), checkpoint)
        second = client.get("/api/search", params={"index": "fresh", "q": "白色", "k": 10}).json()
    assert [r["id"] for r in second["results"]] == reference_top(data_root, "fresh", "白色", 10)
    assert [r["id"] for r in first["results"]] != [r["id"] for r in second["results"]]


def test_concurrent_queries_get_the_answers_they_get_alone(server):
    """Queries that arrive together are encoded together; each still gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    asks = [({"index": ("alpha", "beta")[i % 2], "q": f"{'红蓝黑白紫'[i % 5]}色 {'裙裤鞋包帽'[i % 4]}", "k": 3 + i % 7})
            for i in range(24)]
    with server.client() as client:
        alone = [client.get("/api/search", params=p).json()["results"] for p in asks]
    with ThreadPoolExecutor(12) as pool:
        def ask(params):
            with server.client() as c:
                return c.get("/api/search", params=params).json()["results"]
        together = list(pool.map(ask, asks))
    assert [[r["id"] for r in rows] for rows in together] == [[r["id"] for r in rows] for rows in alone]
    assert [len(rows) for rows in together] == [p["k"] for p in asks]
    for mine, ref in zip(together, alone):
        assert [r["score"] for r in mine] == pytest.approx([r["score"] for r in ref], abs=1e-4)


def test_an_ensemble_index_ranks_as_the_ensemble_prediction(server, root, tmp_path):
    """An index of two members weighted 3:1 answers a text with the images `cnclip predict
    --mode ensemble` ranks first for it (the same fusion), scored by the fused score."""
    from services.trainer.cli import main as cli_main
    from services.trainer.predict.ensemble import load_saved_scores
    from tests.fixtures_search import TINY

    data_root, data = root
    members = [data_root / "checkpoints" / f"{name}.pt" for name in ("alpha", "beta")]
    build_index(data_root, "duo", data.lmdb("test"), None, "--members", *map(str, members), "--weights", "3", "1")
    assert cli_main(["predict", "--mode", "ensemble", "--members", *map(str, members), "--weights", "3", "1",
                     "--image-data", str(data.lmdb("test")), "--text-data", str(data.texts("test")),
                     "--score-dir", str(tmp_path / "scores"), "--scores-dtype", "float32",
                     "--output", str(tmp_path / "ens.jsonl"), *TINY]) == 0
    predicted = [json.loads(line) for line in (tmp_path / "ens.jsonl").read_text().splitlines()]
    saved = [load_saved_scores(p) for p in sorted((tmp_path / "scores").glob("*.npy"),
                                                     key=lambda p: "beta" in p.name)]
    texts = {row["text_id"]: row["text"] for row in map(json.loads, data.texts("test").read_text().splitlines())}
    column = {image_id: c for c, image_id in enumerate(saved[0].image_ids)}
    same = 0
    with server.client() as client:
        for row in predicted[:8]:
            got = client.get("/api/search", params={"index": "duo", "q": texts[row["text_id"]], "k": 10})
            assert got.status_code == 200, got.text
            results = got.json()["results"]
            r = saved[0].text_ids.index(row["text_id"])
            fused = 0.75 * np.asarray(saved[0].matrix[r]) + 0.25 * np.asarray(saved[1].matrix[r])
            # The service scores each image by the fused score (float16 embeddings: ~1e-3) ...
            for hit in results:
                assert hit["score"] == pytest.approx(fused[column[hit["id"]]], abs=3e-3)
            # ... and returns the prediction's top 10, but for images tied within that rounding.
            tenth = np.sort(fused)[-10]
            assert all(fused[column[hit["id"]]] >= tenth - 3e-3 for hit in results)
            same += [hit["id"] for hit in results] == row["image_ids"]
        assert same >= 6
        listed = {i["name"]: i for i in client.get("/api/search/indexes").json()["indexes"]}
    assert listed["duo"]["members"] == [str(m.resolve()) for m in members]
    assert listed["duo"]["weights"] == pytest.approx([0.75, 0.25])
    assert listed["duo"]["checkpoint"] is None
