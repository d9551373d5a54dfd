"""`cnclip index`: a gallery LMDB embedded with a tiny checkpoint into experiments/<name>/index/."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from services.trainer.cli import main as cli_main
from shared.gallery_index import (
    EMBEDDINGS_FILE,
    FAISS_FILE,
    IDS_FILE,
    MANIFEST_FILE,
    TMP_PREFIX,
    IndexFormatError,
    Manifest,
    build_faiss,
    checkpoint_sha256,
    load_index,
    recall_at_10,
    write_index,
)

TINY = ["--vision-model", "tiny", "--text-model", "tiny", "--device", "cpu", "--precision", "fp32",
        "--img-batch-size", "16"]


def run_index(capsys, data, checkpoint, experiments, *extra: str) -> tuple[int, dict | None, str]:
    resume = ["--resume", str(checkpoint)] if checkpoint is not None else []
    code = cli_main(["index", "--image-data", str(data.lmdb("test")), *resume,
                     "--experiments", str(experiments), *TINY, *extra])
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1]) if code == 0 else None
    return code, result, err


@pytest.fixture(scope="module")
def exact_build(tmp_path_factory, make_synthetic_data, tiny_checkpoint):
    """One exact index of the default synthetic test gallery (built through the CLI)."""
    data = make_synthetic_data()
    experiments = tmp_path_factory.mktemp("experiments")
    code = cli_main(["index", "--image-data", str(data.lmdb("test")), "--resume", str(tiny_checkpoint),
                     "--experiments", str(experiments), "--name", "exact", *TINY])
    assert code == 0
    return data, experiments / "exact" / "index"


def test_index_holds_the_prediction_pipelines_embeddings(exact_build, tiny_checkpoint):
    from services.trainer.data.lmdb_read import GalleryDataset
    from services.trainer.data.transforms import image_transform
    from services.trainer.model import image_resolution
    from services.trainer.predict.features import image_features
    from services.trainer.predict.pipeline import load_model
    from shared.options import PredictOptions

    data, folder = exact_build
    assert sorted(p.name for p in folder.iterdir()) == sorted([IDS_FILE, EMBEDDINGS_FILE, FAISS_FILE, MANIFEST_FILE])
    index = load_index(folder)
    options = PredictOptions(vision_model="tiny", text_model="tiny", device="cpu", precision="fp32",
                             resume=str(tiny_checkpoint), image_data=str(data.lmdb("test")), text_data="x")
    model, _ = load_model(tiny_checkpoint, options, torch.device("cpu"))
    reference = image_features(model, GalleryDataset(data.lmdb("test"), image_transform(image_resolution("tiny"))),
                               device=torch.device("cpu"), precision="fp32")
    assert index.ids == reference.ids
    assert index.embeddings.dtype == np.float16
    np.testing.assert_allclose(index.embeddings.astype(np.float32), reference.features.numpy(), atol=2e-3)
    m = index.manifest
    assert (m.count, m.dim, m.index_kind, m.recall_at_10) == (len(reference.ids), 64, "flat", 1.0)
    assert m.checkpoint == str(tiny_checkpoint.resolve())
    assert m.checkpoint_sha256 == checkpoint_sha256(tiny_checkpoint)
    assert m.gallery == str(data.lmdb("test").resolve())
    assert (m.vision_model, m.text_model) == ("tiny", "tiny")
    # Exact search: every image is its own best match, scored by its own inner product.
    scores, rows = index.search(reference.features.numpy()[:5], 3)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(scores[:, 0], (reference.features[:5] ** 2).sum(1).numpy(), atol=1e-4)


@pytest.mark.parametrize("kind,extra", [("hnsw", ["--hnsw-m", "8"]), ("ivf", ["--ivf-lists", "4", "--ivf-probe", "2"])])
def test_approximate_index_reports_its_recall_against_exact(capsys, tmp_path, synthetic_data, tiny_checkpoint, kind, extra):
    code, result, err = run_index(capsys, synthetic_data, tiny_checkpoint, tmp_path, "--name", kind,
                                  "--index-kind", kind, *extra)
    assert code == 0, err
    index = load_index(tmp_path / kind / "index")
    assert index.manifest.index_kind == kind == result["index_kind"]
    vectors = index.embeddings.astype(np.float32)
    # The reported figure is what the stored index achieves, measured again here.
    assert result["recall_at_10"] == index.manifest.recall_at_10 == recall_at_10(index.faiss_index, vectors)
    assert 0 < result["recall_at_10"] <= 1
    if kind == "ivf":
        assert index.manifest.params == {"ivf_lists": 4, "ivf_probe": 2} and index.faiss_index.nprobe == 2


def test_ivf_with_few_probes_misses_what_exact_finds():
    """Recall is measured, not assumed: probing 1 of 16 clusters of random vectors loses hits."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    narrow, _ = build_faiss(vectors, "ivf", {"ivf_lists": 16, "ivf_probe": 1})
    wide, _ = build_faiss(vectors, "ivf", {"ivf_lists": 16, "ivf_probe": 16})
    assert recall_at_10(narrow, vectors, queries=200) < recall_at_10(wide, vectors, queries=200) == 1.0


def test_a_failed_write_leaves_the_earlier_index_whole(exact_build, tmp_path):
    _, folder = exact_build
    target = tmp_path / "run" / "index"
    shutil.copytree(folder, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    index = load_index(target)
    vectors = index.embeddings.astype(np.float32)
    manifest = index.manifest.model_copy(update={"created": 1.0})
    with pytest.raises(TypeError):  # FAISS refuses to write what is not an index, midway through
        write_index(target, index.ids, vectors, manifest, faiss_index="not an index")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in target.parent.iterdir()] == ["index"]  # nothing half-made beside it


def test_leftovers_of_a_killed_build_are_never_read_and_go_with_the_next(capsys, tmp_path, synthetic_data,
                                                                        tiny_checkpoint):
    run = tmp_path / "killed"
    stale = run / f"{TMP_PREFIX}deadbeef"
    stale.mkdir(parents=True)
    (stale / IDS_FILE).write_text("[1, 2")  # what a build killed mid-write leaves
    with pytest.raises(IndexFormatError, match="no index"):
        load_index(run / "index")
    code, result, err = run_index(capsys, synthetic_data, tiny_checkpoint, tmp_path, "--name", "killed")
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["index"]
    assert load_index(run / "index").manifest.count == result["count"]


def test_corrupt_files_are_named(exact_build, tmp_path):
    _, folder = exact_build
    for name, damage in ((FAISS_FILE, b"\x00garbage"), (IDS_FILE, b"[1,"), (MANIFEST_FILE, b"{}"),
                         (EMBEDDINGS_FILE, b"NUMPY?")):
        copy = tmp_path / name / "index"
        shutil.copytree(folder, copy)
        (copy / name).write_bytes(damage)
        with pytest.raises(IndexFormatError, match=name.replace(".", r"\.")):
            load_index(copy)
    short = tmp_path / "short" / "index"
    shutil.copytree(folder, short)
    ids = json.loads((short / IDS_FILE).read_text())
    (short / IDS_FILE).write_text(json.dumps(ids[:-1]))
    with pytest.raises(IndexFormatError, match="does not agree with its manifest"):
        load_index(short)


@pytest.mark.parametrize("args,message", [
    (["--ivf-lists", "4"], "--ivf-lists: ivf_lists and ivf_probe belong to index_kind 'ivf'"),
    (["--index-kind", "annoy"], "invalid choice"),
    (["--hnsw-m", "2"], "--hnsw-m"),
])
def test_bad_options_are_refused_with_their_name(capsys, tmp_path, synthetic_data, tiny_checkpoint, args, message):
    try:
        code, _, err = run_index(capsys, synthetic_data, tiny_checkpoint, tmp_path, *args)
    except SystemExit as exc:  # argparse refuses an unknown choice itself
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "index").exists()


def test_missing_checkpoint_is_one_line(capsys, tmp_path, synthetic_data):
    code, _, err = run_index(capsys, synthetic_data, tmp_path / "gone.pt", tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"cnclip index: error: checkpoint not found: {tmp_path / 'gone.pt'}"]


def test_manifest_is_the_documented_model(exact_build):
    _, folder = exact_build
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    assert set(Manifest.model_fields) <= set(raw)


def test_a_prediction_keeps_its_gallery_embeddings_as_an_index(capsys, tmp_path, exact_build, tiny_checkpoint):
    """--save-index: the embeddings the prediction ranked with, not a second embedding pass."""
    data, exact = exact_build
    code = cli_main(["predict", "--resume", str(tiny_checkpoint), "--image-data", str(data.lmdb("test")),
                     "--text-data", str(data.texts("test")), "--output", str(tmp_path / "p.jsonl"),
                     "--experiments", str(tmp_path), "--save-index", "kept", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["index"] == str(tmp_path / "kept" / "index")
    kept, built = load_index(tmp_path / "kept" / "index"), load_index(exact)
    assert kept.ids == built.ids
    np.testing.assert_array_equal(kept.embeddings, built.embeddings)
    assert kept.manifest.checkpoint_sha256 == built.manifest.checkpoint_sha256
    assert kept.manifest.gallery == built.manifest.gallery and kept.manifest.index_kind == "flat"


def test_save_index_belongs_to_mode_single(capsys, tmp_path, synthetic_data, tiny_checkpoint):
    code = cli_main(["predict", "--mode", "ensemble", "--members", str(tiny_checkpoint), str(tiny_checkpoint),
                     "--image-data", str(synthetic_data.lmdb("test")), "--text-data",
                     str(synthetic_data.texts("test")), "--save-index", "x", *TINY])
    assert code == 2 and "--save-index: save_index keeps a single model's gallery embeddings" in capsys.readouterr().err


def test_an_ensemble_index_holds_its_members_embeddings_side_by_side(capsys, tmp_path, exact_build,
                                                                     tiny_checkpoint):
    """--members/--weights as `cnclip predict --mode ensemble`: each member embeds the gallery
    (the same vectors as its own single index), the manifest names members and weights."""
    from tests.trainer.test_predict import save_tiny_checkpoint

    data, exact = exact_build
    other = save_tiny_checkpoint(tmp_path / "other.pt", seed=7)
    code, result, err = run_index(capsys, data, None, tmp_path, "--name", "other", "--resume", str(other))
    assert code == 0, err
    code = cli_main(["index", "--image-data", str(data.lmdb("test")), "--members", str(tiny_checkpoint), str(other),
                     "--weights", "3", "1", "--experiments", str(tmp_path), "--name", "duo", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["members"] == [str(tiny_checkpoint.resolve()), str(other.resolve())]
    assert result["weights"] == pytest.approx([0.75, 0.25]) and result["dim"] == 128
    duo, one, two = (load_index(p) for p in (tmp_path / "duo" / "index", exact, tmp_path / "other" / "index"))
    assert duo.ids == one.ids == two.ids
    np.testing.assert_array_equal(duo.embeddings, np.hstack([one.embeddings, two.embeddings]))
    m = duo.manifest
    assert m.checkpoint is None and m.checkpoint_sha256 is None and m.weights == pytest.approx([0.75, 0.25])
    assert [(x.checkpoint, x.checkpoint_sha256, x.dim) for x in m.members] == [
        (str(tiny_checkpoint.resolve()), checkpoint_sha256(tiny_checkpoint), 64),
        (str(other.resolve()), checkpoint_sha256(other), 64)]
    assert [x.checkpoint for x in m.checkpoints] == [x.checkpoint for x in m.members]
    assert [x.checkpoint for x in one.manifest.checkpoints] == [one.manifest.checkpoint]


@pytest.mark.parametrize("args,message", [
    (["--members", "{a}"], "--members: an ensemble needs at least two member checkpoints"),
    (["--members", "{a}", "{a}", "--weights", "1"], "--weights: 2 members but 1 weights"),
    (["--members", "{a}", "{a}", "--weights", "0", "0"], "--weights: weights must be finite, non-negative"),
    (["--members", "{a}", "{a}", "--resume", "{a}"], "--members: give either a checkpoint (resume) or"),
    (["--resume", "{a}", "--weights", "1"], "--weights: weights belong to an ensemble's members"),
    ([], "--resume: give either a checkpoint (resume) or an ensemble's members"),
    (["--members", "{a}", "{gone}"], "checkpoint not found: {gone}"),
])
def test_bad_ensembles_are_refused_with_their_name(capsys, tmp_path, synthetic_data, tiny_checkpoint, args,
                                                   message):
    fill = {"a": str(tiny_checkpoint), "gone": str(tmp_path / "gone.pt")}
    code = cli_main(["index", "--image-data", str(synthetic_data.lmdb("test")), "--experiments", str(tmp_path),
                     *[a.format(**fill) for a in args], *TINY])
    assert code == 2 and message.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "index").exists()
