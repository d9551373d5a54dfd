"""Search through the control service: an index job run by the real runner, the search service
behind the control proxy (one origin, one sign-in, the control's security headers), and the
/search page in headless Chromium."""
from __future__ import annotations

import io
import shutil
import time

import httpx
import pytest
import torch
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.control.conftest import TOKEN, ControlServer, RunnerWorker, sign_in
from tests.control.pages import screenshot
from tests.fixtures_search import SearchServer

pytestmark = pytest.mark.slow
TINY = {"vision_model": "tiny", "text_model": "tiny", "precision": "fp32", "device": "cpu"}


def save_checkpoint(path, seed: int):
    from services.trainer.model import create_model
    from services.trainer.model.checkpoint import save_checkpoint as save

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(path, create_model("tiny", "tiny"), None, epoch=1, step=seed, name=f"tiny-{seed}")


@pytest.fixture(scope="module")
def root(tmp_path_factory, make_synthetic_data):
    data = make_synthetic_data()
    root = tmp_path_factory.mktemp("search-data")
    shutil.copytree(data.lmdb("test"), root / "datasets/syn/lmdb/test")
    for name, seed in (("offline", 1), ("online", 2)):
        save_checkpoint(root / f"experiments/{name}/checkpoints/epoch_latest.pt", seed)
    return root


def wait_for(client: httpx.Client, job_id: str, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture(scope="module")
def stack(root, redis_server):
    """Control and search on one data root whose two indexes were built by index jobs."""
    import redis as redis_lib

    redis_lib.Redis.from_url(redis_server.url).flushall()
    search = SearchServer(root).start()
    control = runner = None
    try:
        control = ControlServer(redis_server.url, root, env={"CNCLIP_CONTROL_SEARCH_URL": search.base_url}).start(timeout=120)
        runner = RunnerWorker(redis_server.url, root).start()
    except BaseException:
        if control is not None:
            control.stop()
        search.stop()
        raise
    try:
        with control.client() as client:
            jobs = {}
            for name in ("offline", "online"):
                spec = {"image_data": "datasets/syn/lmdb/test", "name": name, "img_batch_size": 32,
                        "resume": f"experiments/{name}/checkpoints/epoch_latest.pt", **TINY}
                if name == "online":
                    spec["index_kind"] = "hnsw"
                answer = client.post("/jobs/index", json=spec)
                assert answer.status_code == 201, answer.text
                jobs[name] = answer.json()["id"]
            done = {name: wait_for(client, job_id) for name, job_id in jobs.items()}
    finally:
        runner.stop()
    yield control, search, done
    control.stop()
    search.stop()


def test_index_jobs_run_to_success_and_report_their_index(stack, root):
    _, _, done = stack
    for name, job in done.items():
        assert job["state"] == "succeeded", job
        assert job["kind"] == "index"
        assert job["result"]["paths"]["index"] == str(root / "experiments" / name / "index")
        assert job["result"]["metrics"]["count"] > 0
    assert done["offline"]["result"]["metrics"]["recall_at_10"] == 1.0
    assert 0 < done["online"]["result"]["metrics"]["recall_at_10"] <= 1.0


def test_index_job_with_missing_inputs_is_refused_before_queueing(stack):
    control, _, _ = stack
    with control.client() as client:
        got = client.post("/jobs/index", json={"image_data": "datasets/none", "resume": "none.pt"})
    assert got.status_code == 422
    assert {e["loc"][-1] for e in got.json()["detail"]} == {"image_data", "resume"}


def test_the_proxy_answers_what_the_search_service_does(stack):
    control, search, _ = stack
    params = {"index": "offline", "q": "红色 连衣裙", "k": 5}
    with control.client() as client, search.client() as direct:
        via = client.get("/api/search", params=params)
        assert via.status_code == 200
        assert [r["id"] for r in via.json()["results"]] == [r["id"] for r in direct.get("/api/search", params=params).json()["results"]]
        assert "content-security-policy" in via.headers and via.headers["x-frame-options"] == "DENY"
        thumb = client.get(via.json()["results"][0]["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert "max-age" in thumb.headers["cache-control"]
        for bad, status, words in (({"index": "offline", "q": " "}, 422, "q is empty"),
                                   ({"index": "offline", "q": "x", "k": 0}, 422, "k: "),
                                   ({"index": "gone", "q": "x"}, 404, "no index named")):
            got = client.get("/api/search", params=bad)
            assert got.status_code == status and words in got.json()["detail"]
        names = [i["name"] for i in client.get("/api/search/indexes").json()["indexes"]]
        assert {"offline", "online"} <= set(names)
        # A phone photo is far larger than a job spec: the upload's own bound applies.
        photo = io.BytesIO()
        Image.effect_noise((900, 900), 80).convert("RGB").save(photo, format="JPEG", quality=95)
        assert len(photo.getvalue()) > 256 * 1024
        picture = client.post("/api/search/image", params={"index": "online", "k": 3}, content=photo.getvalue(),
                              headers={"Content-Type": "image/jpeg"})
        assert picture.status_code == 200, picture.text
        assert len(picture.json()["results"]) == 3
        hostile = client.post("/api/search/image", params={"index": "online"}, content=b"GIF89a broken")
        assert hostile.status_code == 422 and "unusable picture" in hostile.json()["detail"]
    # Without the control's sign-in nothing is proxied.
    assert httpx.get(control.base_url + "/api/search", params=params).status_code == 401


def test_search_service_down_is_a_clear_503(root, redis_url):
    from tests.helpers import free_port

    control = ControlServer(redis_url, root, env={"CNCLIP_CONTROL_SEARCH_URL": f"http://127.0.0.1:{free_port()}"}).start(timeout=120)
    try:
        with control.client() as client:
            got = client.get("/api/search", params={"index": "offline", "q": "x"})
        assert got.status_code == 503 and "search service" in got.json()["detail"]
    finally:
        control.stop()


def test_search_page_shows_two_models_side_by_side(stack, browser, tmp_path):
    control, _, _ = stack
    assert control.token == TOKEN
    sign_in(browser, control, "/search?q=%E7%BA%A2%E8%89%B2%20%E8%BF%9E%E8%A1%A3%E8%A3%99&a=offline&b=online&k=10")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "done")
    columns = browser.find_elements(By.CSS_SELECTOR, "#results .search-column")
    assert [c.get_attribute("data-index") for c in columns] == ["offline", "online"]
    for column in columns:
        assert len(column.find_elements(By.CSS_SELECTOR, "figure.thumb")) == 10
    WebDriverWait(browser, 30).until(lambda d: all(
        d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        for img in d.find_elements(By.CSS_SELECTOR, "#results img")))
    first = columns[0].find_element(By.CSS_SELECTOR, "figure.thumb figcaption").text
    assert first.startswith("#1") and "id " in first
    screenshot(browser, tmp_path, "search")
    # A new query typed into the box replaces the grid and the address.
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("黑色 鞋子")
    browser.execute_script("document.getElementById('results').dataset.state = ''")
    browser.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "done")
    assert "q=%E9%BB%91%E8%89%B2" in browser.current_url
    # An empty query says so instead of searching.
    box = browser.find_element(By.ID, "q")
    box.clear()
    browser.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    assert "Type something" in browser.find_element(By.ID, "search-message").text
