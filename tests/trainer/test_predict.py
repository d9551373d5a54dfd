"""`cnclip predict --mode single` end to end: tiny model, a tiny MUGE split in LMDB."""
from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from services.trainer.cli import build_parser, main as cli_main

COLOURS = {"红色": (220, 30, 30), "蓝色": (30, 60, 220), "绿色": (30, 180, 60), "黄色": (230, 210, 40),
           "黑色": (20, 20, 20), "白色": (245, 245, 245)}
SHAPES = ("圆形", "方形")


def build_muge_data(root: Path, seed: int = 0, n_images: int = 24, n_texts: int = 18) -> dict[str, Path]:
    """valid and test splits of drawn shapes with Chinese captions, and their LMDB."""
    from services.trainer.data.lmdb_build import build_lmdb

    rng = random.Random(seed)
    data = root / "data"
    data.mkdir(parents=True)
    for split, offset in (("valid", 1000), ("test", 2000)):
        images = []
        with open(data / f"{split}_imgs.tsv", "w") as tsv:
            for i in range(n_images):
                colour = rng.choice(list(COLOURS))
                shape = rng.choice(SHAPES)
                img = Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3)))
                draw = ImageDraw.Draw(img)
                x, y, r = rng.randint(16, 48), rng.randint(16, 48), rng.randint(8, 16)
                box = (x - r, y - r, x + r, y + r)
                (draw.ellipse if shape == "圆形" else draw.rectangle)(box, fill=COLOURS[colour])
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                image_id = offset + i
                images.append((image_id, colour, shape))
                tsv.write(f"{image_id}\t{base64.urlsafe_b64encode(buf.getvalue()).decode()}\n")
        with open(data / f"{split}_texts.jsonl", "w", encoding="utf-8") as texts:
            for t in range(n_texts):
                image_id, colour, shape = images[t % n_images]
                truth = [i for i, c, s in images if c == colour and s == shape]
                texts.write(json.dumps({"text_id": offset * 10 + t, "text": f"{colour}{shape}图案商品",
                                        "image_ids": truth}, ensure_ascii=False) + "\n")
    report = build_lmdb(data, "valid,test", root / "lmdb", on_error="fail")
    assert report.ok
    return {
        "test_texts": data / "test_texts.jsonl", "test_lmdb": root / "lmdb" / "test",
        "valid_texts": data / "valid_texts.jsonl", "valid_lmdb": root / "lmdb" / "valid",
    }


def save_tiny_checkpoint(path: Path, seed: int) -> Path:
    from services.trainer.model import create_model
    from services.trainer.model.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = create_model("tiny", "tiny")
    return save_checkpoint(path, model, None, epoch=1, step=seed, name=f"tiny-{seed}")


TINY = ["--vision-model", "tiny", "--text-model", "tiny", "--device", "cpu", "--img-batch-size", "8",
        "--text-batch-size", "8"]


@pytest.fixture(scope="module")
def muge(tmp_path_factory):
    return build_muge_data(tmp_path_factory.mktemp("muge"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-1.pt", seed=1)


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def reference_top10(checkpoint: Path, muge: dict) -> dict[int, list[int]]:
    """Brute force: features image by image and text by text, full score matrix, stable sort."""
    from services.trainer.data.lmdb_read import GalleryDataset
    from services.trainer.data.texts import TextsDataset
    from services.trainer.data.transforms import image_transform
    from services.trainer.model import create_model, encode_image, encode_text
    from services.trainer.model.checkpoint import load_weights

    model = create_model("tiny", "tiny")
    load_weights(model, checkpoint)
    model.eval()
    gallery = GalleryDataset(muge["test_lmdb"], image_transform(64))
    texts = TextsDataset(muge["test_texts"])
    with torch.no_grad():
        img = torch.cat([encode_image(model, gallery[i][1][None]) for i in range(len(gallery))])
        txt = torch.cat([encode_text(model, texts[i][2][None], texts[i][3][None]) for i in range(len(texts))])
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    order = torch.sort(txt @ img.T, dim=1, descending=True, stable=True).indices[:, :10]
    return {texts.text_ids[r]: [gallery.image_ids[c] for c in row] for r, row in enumerate(order.tolist())}


def test_single_predicts_evaluates_and_matches_brute_force(tmp_path, muge, checkpoint, capsys):
    out = tmp_path / "pred.jsonl"
    events = tmp_path / "events.jsonl"
    rc = cli_main(["predict", "--mode", "single", "--resume", str(checkpoint), "--image-data", str(muge["test_lmdb"]),
                   "--text-data", str(muge["test_texts"]), "--output", str(out), "--events", str(events),
                   "--query-chunk", "5", "--gallery-chunk", "7", "--score-dir", str(tmp_path / "scores"), *TINY])
    assert rc == 0
    result = last_json(capsys)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 18 and all(len(r["image_ids"]) == 10 for r in lines)
    predicted = {r["text_id"]: r["image_ids"] for r in lines}
    # Features within 1e-6 of each other can swap near-equal neighbours; compare with tolerance
    # on the sets and exactly on most rows.
    expected = reference_top10(checkpoint, muge)
    same = sum(predicted[t] == expected[t] for t in expected)
    assert same >= len(expected) - 1
    # The written file evaluates (cnclip evaluate) to the metrics predict reported.
    assert cli_main(["evaluate", str(muge["test_texts"]), str(out)]) == 0
    evaluated = last_json(capsys)
    assert evaluated == result["metrics"]
    assert json.loads(Path(result["metrics_file"]).read_text()) == evaluated
    assert 0 <= evaluated["r1"] <= evaluated["r5"] <= evaluated["r10"] <= 100
    kinds = [json.loads(line)["type"] for line in events.read_text().splitlines()]
    assert kinds[0] == "phase" and kinds[-1] == "result"
    assert not (tmp_path / "scores").exists()  # no --save-scores, nothing kept


def test_save_scores_float16(tmp_path, muge, checkpoint, capsys):
    out = tmp_path / "pred.jsonl"
    rc = cli_main(["predict", "--resume", str(checkpoint), "--image-data", str(muge["test_lmdb"]),
                   "--text-data", str(muge["test_texts"]), "--output", str(out), "--save-scores",
                   "--scores-dtype", "float16", "--score-dir", str(tmp_path / "scores"), *TINY])
    assert rc == 0
    result = last_json(capsys)
    scores = np.load(result["scores"], mmap_mode="r")
    assert scores.dtype == np.float16 and scores.shape == (18, 24)
    side = json.loads(Path(result["scores"] + ".json").read_text())
    assert len(side["text_ids"]) == 18 and len(side["image_ids"]) == 24
    # The top image of every row of the matrix is the first prediction (up to fp16 rounding ties).
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    for row, pred in zip(np.asarray(scores, dtype=np.float32), preds):
        top_score = row.max()
        assert row[side["image_ids"].index(pred["image_ids"][0])] == top_score


def test_online_options_parse_into_the_prediction_settings(tmp_path, muge, checkpoint, capsys):
    from services.trainer.commands.predict import config_from

    base = ["predict", "--resume", str(checkpoint), "--image-data", str(muge["test_lmdb"]),
            "--text-data", str(muge["test_texts"]), "--output", str(tmp_path / "p.jsonl"), *TINY]
    config = config_from(build_parser("predict").parse_args(base + ["--online", "live", "--online-max-epochs", "3"]))
    assert config.online == "live" and config.online_max_epochs == 3
    config = config_from(build_parser("predict").parse_args(base + ["--online-learning", "--online-cache"]))
    assert config.online == "cache"
    # With learning off the epoch count is moot.
    assert cli_main(base + ["--online", "off", "--online-max-epochs", "1", "--no-progress"]) == 0
    assert (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.remove("--resume") or a, "--resume: mode 'single' needs a checkpoint"),
        (lambda a: a + ["--members", "x.pt"], "--members: members, weights and fit_weights_on belong to mode 'ensemble'"),
        (lambda a: [x if not x.endswith("test_texts.jsonl") else x + ".missing" for x in a], "texts file not found"),
        (lambda a: a + ["--top-k", "25"], "top-k 25 is larger than the gallery (24 images)"),
        (lambda a: a + ["--mode", "ensemble"], "--resume: mode 'ensemble' takes its checkpoints from members"),
        (lambda a: a + ["--online-cache"], "--online-cache needs --online-learning"),
    ],
)
def test_bad_input_is_reported_clearly(tmp_path, muge, checkpoint, capsys, change, message):
    args = ["predict", "--resume", str(checkpoint), "--image-data", str(muge["test_lmdb"]),
            "--text-data", str(muge["test_texts"]), "--output", str(tmp_path / "p.jsonl"), *TINY]
    args = change(args)
    if "--resume" not in args:
        args = [a for a in args if a != str(checkpoint)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "p.jsonl").exists()


def test_checkpoint_of_another_model_fails_with_names(tmp_path, muge, checkpoint, capsys):
    args = ["predict", "--resume", str(checkpoint), "--image-data", str(muge["test_lmdb"]),
            "--text-data", str(muge["test_texts"]), "--output", str(tmp_path / "p.jsonl"),
            "--vision-model", "tiny", "--text-model", "RBT3", "--device", "cpu"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert str(checkpoint) in err and "does not fit" in err


def test_job_spec_command_lines_run(muge, capsys):
    """The options the job runner resolves from a PredictSpec are the ones predict runs with."""
    from shared.jobspec import PredictSpec

    root = muge["test_lmdb"].parents[1]
    for seed in (1, 2):
        save_tiny_checkpoint(root / "ckpt" / f"m{seed}.pt", seed=seed)
    common = dict(image_data="lmdb/test", text_data="data/test_texts.jsonl", vision_model="tiny",
                  text_model="tiny", device="cpu")
    specs = [
        PredictSpec(mode="single", resume="ckpt/m1.pt", **common),
        PredictSpec(mode="ensemble", members=["ckpt/m1.pt", "ckpt/m2.pt"], weights=[1.0, 2.0],
                    score_dir="npy_save/demo", **common),
        PredictSpec(mode="ensemble-last", score_dir="npy_save/demo", **common),
    ]
    outputs = []
    for i, spec in enumerate(specs):
        options = root / f"job{i}.options.json"
        options.write_text(json.dumps(spec.resolved_options(root, job_id=f"job{i}",
                                                            events=root / f"job{i}.events.jsonl")))
        assert cli_main(["predict", "--options-file", str(options)]) == 0, capsys.readouterr().err
        result = last_json(capsys)
        assert Path(result["output"]) == spec.output_path(root, f"job{i}")
        assert "mr" in result["metrics"]
        outputs.append(Path(result["output"]).read_text())
    assert outputs[1] == outputs[2]  # ensemble-last redoes the ensemble from its saved matrices


def test_predict_on_the_synthetic_data_set(tmp_path, synthetic_data, tiny_checkpoint, capsys):
    """The product's own synthetic MUGE set (rendered, built to LMDB) predicts and evaluates."""
    out = tmp_path / "synthetic.jsonl"
    rc = cli_main(["predict", "--resume", str(tiny_checkpoint), "--image-data", str(synthetic_data.lmdb("test")),
                   "--text-data", str(synthetic_data.texts("test")), "--output", str(out), *TINY])
    assert rc == 0, capsys.readouterr().err
    result = last_json(capsys)
    n_texts = sum(1 for line in synthetic_data.texts("test").read_text().splitlines() if line.strip())
    assert result["queries"] == n_texts == len(out.read_text().splitlines())
    assert cli_main(["evaluate", str(synthetic_data.texts("test")), str(out)]) == 0
    assert last_json(capsys) == result["metrics"]
