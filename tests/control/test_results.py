"""/jobs/{id}/results: the real `cnclip predict` output of two checkpoints on the synthetic test
split, recorded as succeeded prediction jobs, read back query by query through the control API
(real uvicorn) and on the page in headless Chromium, thumbnails through the search service."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from shared.jobs import JobStore
from shared.jobspec import PredictSpec, TrainSpec
from shared.muge import read_texts
from tests.control.conftest import ControlServer, sign_in
from tests.control.pages import screenshot
from tests.fixtures_search import SearchServer

pytestmark = pytest.mark.browser
TEXTS = "datasets/syn/test_texts.jsonl"
GALLERY = "datasets/syn/lmdb/test"


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, make_synthetic_data):
    """A data root with two prediction files (checkpoints of seeds 1 and 2) and their metrics."""
    from services.trainer.cli import main as cli_main
    from services.trainer.model import create_model
    from services.trainer.model.checkpoint import save_checkpoint

    data = make_synthetic_data()
    root = tmp_path_factory.mktemp("results-root")
    shutil.copytree(data.lmdb("test"), root / GALLERY)
    shutil.copy(data.texts("test"), root / TEXTS)
    outputs = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        checkpoint = save_checkpoint(root / f"experiments/m{seed}/checkpoints/epoch_latest.pt",
                                     create_model("tiny", "tiny"), None, epoch=1, step=1, name=f"m{seed}")
        out = root / f"experiments/results/m{seed}.jsonl"
        assert cli_main(["predict", "--resume", str(checkpoint), "--image-data", str(root / GALLERY),
                         "--text-data", str(root / TEXTS), "--output", str(out), "--vision-model", "tiny",
                         "--text-model", "tiny", "--device", "cpu", "--precision", "fp32"]) == 0
        outputs[seed] = out
    return root, outputs


def record(store: JobStore, output, text_data: str = TEXTS) -> str:
    spec = PredictSpec(mode="single", image_data=GALLERY, text_data=text_data,
                       resume="experiments/m1/checkpoints/epoch_latest.pt",
                       output=str(output.relative_to(output.parents[2])))
    job, _ = store.create(spec)
    store.transition(job.id, "running")
    store.transition(job.id, "succeeded", result={"predictions": str(output)})
    return job.id


@pytest.fixture(scope="module")
def servers(predicted, redis_server):
    """One search service and one control service for the module (starting them is the slow part)."""
    import redis as redis_lib

    root, outputs = predicted
    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushall()
    search = SearchServer(root).start()
    try:
        control = ControlServer(redis_server.url, root, env={"CNCLIP_CONTROL_SEARCH_URL": search.base_url}).start(timeout=120)
    except BaseException:
        search.stop()
        raise
    store = JobStore(client)
    jobs = {seed: record(store, out) for seed, out in outputs.items()}
    yield control, store, jobs, root
    control.stop()
    search.stop()
    client.close()


def test_rows_and_summary_agree_with_the_evaluator(servers, predicted):
    control, _, jobs, root = servers
    texts = read_texts(root / TEXTS)
    metrics = json.loads((predicted[1][1].parent / "m1.jsonl.metrics.json").read_text())
    predictions = {json.loads(line)["text_id"]: json.loads(line)["image_ids"]
                   for line in predicted[1][1].read_text().splitlines()}
    with control.client() as client:
        data = client.get(f"/jobs/{jobs[1]}/results/data", params={"limit": 500}).json()
    assert data["total"] == len(texts) == len(data["rows"])
    assert data["gallery"] == GALLERY
    for row, text in zip(data["rows"], texts):
        assert row["text_id"] == text.text_id and row["text"] == text.text
        ranked = predictions[text.text_id]
        assert row["base"]["ranked"] == ranked
        hits = [rank for rank, image in enumerate(ranked, start=1) if image in text.image_ids]
        assert row["base"]["first_hit"] == (hits[0] if hits else None)
    summary = data["summary"]["base"]
    assert (summary["r1"], summary["r5"], summary["r10"]) == pytest.approx(
        (metrics["r1"], metrics["r5"], metrics["r10"]), abs=0.01)


def test_comparison_sorts_by_the_change_of_the_first_hit(servers):
    control, _, jobs, _ = servers
    with control.client() as client:
        everything = client.get(f"/jobs/{jobs[1]}/results/data",
                                params={"compare": jobs[2], "sort": "change", "limit": 500}).json()
        improved = client.get(f"/jobs/{jobs[1]}/results/data",
                              params={"compare": jobs[2], "filter": "improved", "limit": 500}).json()
        worse = client.get(f"/jobs/{jobs[1]}/results/data",
                           params={"compare": jobs[2], "filter": "worse", "limit": 500}).json()
        misses = client.get(f"/jobs/{jobs[1]}/results/data", params={"filter": "misses10", "limit": 500}).json()
    s = everything["summary"]
    assert s["improved"] + s["worse"] + s["same"] == everything["total"]
    assert s["improved"] > 0 and s["worse"] > 0  # two random models: each wins somewhere
    changes = [abs(r["change"]) for r in everything["rows"]]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0
    for row in everything["rows"]:
        miss = 11
        assert row["change"] == (row["base"]["first_hit"] or miss) - (row["other"]["first_hit"] or miss)
    assert improved["total"] == s["improved"] and all(r["change"] > 0 for r in improved["rows"])
    assert worse["total"] == s["worse"] and all(r["change"] < 0 for r in worse["rows"])
    assert all(r["base"]["first_hit"] is None for r in misses["rows"])
    assert misses["total"] == round(everything["total"] * (1 - s["base"]["r10"] / 100))


def test_what_has_no_results_is_refused_with_the_reason(servers):
    control, store, jobs, root = servers
    train, _ = store.create(TrainSpec(train_data="d"))
    other_texts = root / "datasets/syn/other_texts.jsonl"
    other_texts.write_text('{"text_id": 1, "text": "x", "image_ids": []}\n')
    elsewhere = record(store, root / "experiments/results/m2.jsonl", text_data="datasets/syn/other_texts.jsonl")
    with control.client() as client:
        for params, path, status, words in (
                ({}, "/jobs/nope/results/data", 404, "no job nope"),
                ({}, f"/jobs/{train.id}/results/data", 409, "is a train job"),
                ({"compare": elsewhere}, f"/jobs/{jobs[1]}/results/data", 409, "predicted different texts"),
                ({"filter": "improved"}, f"/jobs/{jobs[1]}/results/data", 409, "needs a job to compare"),
                ({"compare": "nope"}, f"/jobs/{jobs[1]}/results/data", 404, "no job nope")):
            got = client.get(path, params=params)
            assert got.status_code == status and words in got.json()["detail"], (path, got.text)
        for bad in ({"limit": 0}, {"filter": "some"}, {"compare": "../x"}):
            assert client.get(f"/jobs/{jobs[1]}/results/data", params=bad).status_code == 422
        (root / "experiments/results/m1.jsonl").rename(root / "experiments/results/m1.moved")
        try:
            gone = client.get(f"/jobs/{jobs[1]}/results/data")
        finally:
            (root / "experiments/results/m1.moved").rename(root / "experiments/results/m1.jsonl")
        assert gone.status_code == 409 and "is gone" in gone.json()["detail"]


def test_results_page_shows_both_jobs_rows_with_the_truth_marked(servers, browser, tmp_path):
    control, _, jobs, _ = servers
    sign_in(browser, control, f"/jobs/{jobs[1]}/results?compare={jobs[2]}&filter=changed&sort=change")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "results-rows").get_attribute("data-state") == "done")
    rows = browser.find_elements(By.CSS_SELECTOR, "#results-rows .result-row")
    assert rows
    for row in rows[:5]:
        strips = row.find_elements(By.CSS_SELECTOR, ".result-strip")
        assert len(strips) == 2
        assert [s.find_element(By.CSS_SELECTOR, ".strip-label b").text for s in strips] == [jobs[1], jobs[2]]
        assert row.find_elements(By.CSS_SELECTOR, ".change")
    assert browser.find_elements(By.CSS_SELECTOR, "#results-rows figure.thumb.truth")
    # Thumbnails load lazily: bring the first two rows' pictures into view one by one (a picture
    # whose load has started finishes off screen), wait until each has loaded or failed, then
    # name any that failed.
    pictures = [img for row in rows[:2] for img in row.find_elements(By.CSS_SELECTOR, "img")]
    assert pictures
    for img in pictures:
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete", img) for img in pictures))
    broken = [img.get_attribute("src") for img in pictures
              if not browser.execute_script("return arguments[0].naturalWidth > 0", img)]
    assert not broken, f"thumbnails that did not load: {broken}"
    assert "improved" in browser.find_element(By.ID, "results-summary").text
    screenshot(browser, tmp_path, "results-compare")
    # The job's panel on /status links here.
    browser.get(control.base_url + f"/status?job={jobs[1]}")
    link = wait.until(lambda d: (lambda a: a if a.is_displayed() else None)(d.find_element(By.ID, "job-results")))
    assert link.get_attribute("href").endswith(f"/jobs/{jobs[1]}/results")
