"""Building LMDB from MUGE files: Chinese-CLIP's layout byte for byte, and every bad line
reported with its file and line number, skipped or failing the build."""
from __future__ import annotations

import base64
import gc
import io
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from PIL import Image

from services.trainer.data.lmdb_build import LmdbBuildError, build_lmdb
from services.trainer.data.lmdb_read import close_readonly

ROOT = Path(__file__).resolve().parents[2]


def dump_env(path: Path) -> list[tuple[bytes, bytes]]:
    close_readonly(path)  # readers elsewhere in this process may hold the one allowed handle
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


def run_cn_clip_build(data_dir: Path, splits: str, lmdb_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset", "--data_dir", str(data_dir),
         "--splits", splits, "--lmdb_dir", str(lmdb_dir)],
        check=True, capture_output=True, timeout=300,
    )


def jpeg_bytes(colour=(200, 30, 30), size=(24, 20), fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


# ---------------------------------------------------------------- layout and compatibility

def test_byte_identical_to_cn_clip_build_script(synthetic_data, tmp_path):
    theirs = tmp_path / "theirs"
    run_cn_clip_build(synthetic_data.data_dir, "train,valid,test", theirs)
    for split in ("train", "valid", "test"):
        for part in ("imgs", "pairs"):
            ours_items = dump_env(synthetic_data.lmdb(split) / part)
            assert ours_items == dump_env(theirs / split / part), (split, part)
            assert len(ours_items) > 10


def test_layout_holds_every_image_and_pair(synthetic_data):
    split = "valid"
    images = dict(line.split("\t") for line in synthetic_data.imgs(split).read_text().splitlines())
    texts = [json.loads(line) for line in synthetic_data.texts(split).read_text().splitlines()]
    imgs = dict(dump_env(synthetic_data.lmdb(split) / "imgs"))
    pairs = dict(dump_env(synthetic_data.lmdb(split) / "pairs"))
    assert imgs.pop(b"num_images") == str(len(images)).encode()
    assert {k.decode(): v.decode() for k, v in imgs.items()} == images
    expected = [(i, t["text_id"], t["text"]) for t in texts for i in t["image_ids"]]
    assert pairs.pop(b"num_samples") == str(len(expected)).encode()
    assert [pickle.loads(pairs[str(i).encode()]) for i in range(len(expected))] == expected


def test_cn_clip_dataset_reads_our_lmdb(synthetic_data):
    import torch
    from cn_clip.training.data import LMDBDataset

    from services.trainer.data.lmdb_read import PairsDataset
    from services.trainer.data.transforms import image_transform

    # LMDB allows one handle per file and process: read theirs fully, close it, then ours.
    close_readonly(synthetic_data.lmdb("valid"))
    theirs = LMDBDataset(str(synthetic_data.lmdb("valid")), split="val", max_txt_length=52, resolution=64)
    indices = [0, 7, len(theirs) - 1]
    their_items, their_len = [theirs[i] for i in indices], len(theirs)
    del theirs
    gc.collect()
    ours = PairsDataset(synthetic_data.lmdb("valid"), image_transform(64), context_length=52)
    assert their_len == len(ours) > 0
    for index, (their_image, their_text, eos) in zip(indices, their_items):
        image, input_ids, attention_mask = ours[index]
        assert torch.equal(their_image, image)
        assert torch.equal(their_text, input_ids)
        assert int(attention_mask.sum()) == eos + 1


def test_our_readers_read_cn_clip_lmdb(synthetic_data, tmp_path):
    import torch

    from services.trainer.data.lmdb_read import GalleryDataset, PairsDataset
    from services.trainer.data.transforms import image_transform

    run_cn_clip_build(synthetic_data.data_dir, "test", tmp_path)
    transform = image_transform(64)
    their_pairs = PairsDataset(tmp_path / "test", transform, return_text=True)
    our_pairs = PairsDataset(synthetic_data.lmdb("test"), transform, return_text=True)
    assert len(their_pairs) == len(our_pairs)
    for index in range(len(our_pairs)):
        for a, b in zip(their_pairs[index], our_pairs[index]):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    gallery = GalleryDataset(tmp_path / "test", transform)
    assert len(gallery) == synthetic_data.manifest["splits"]["test"]["images"]
    assert gallery.image_ids == sorted(int(i) for i in synthetic_data.manifest["images"]["test"])


def test_rebuild_replaces_an_existing_split(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train_imgs.tsv").write_text(f"1\t{b64(jpeg_bytes())}\n2\t{b64(jpeg_bytes())}\n")
    (data / "train_texts.jsonl").write_text('{"text_id": 1, "text": "红色", "image_ids": [1, 2]}\n')
    build_lmdb(data, "train")
    (data / "train_imgs.tsv").write_text(f"1\t{b64(jpeg_bytes())}\n")
    (data / "train_texts.jsonl").write_text('{"text_id": 1, "text": "红色", "image_ids": [1]}\n')
    report = build_lmdb(data, "train")
    assert report.ok
    assert dict(dump_env(data / "lmdb" / "train" / "pairs"))[b"num_samples"] == b"1"
    assert [p.name for p in (data / "lmdb").iterdir()] == ["train"]  # no temporary folder left


# ---------------------------------------------------------------- bad lines

GOOD = jpeg_bytes()


def write_bad_split(data: Path) -> dict[str, tuple[str, int]]:
    """A split with one problem per line; returns kind -> (file name, line number) expected."""
    data.mkdir(parents=True, exist_ok=True)
    truncated = GOOD[: len(GOOD) // 2]
    image_lines = [
        f"1\t{b64(GOOD)}",                                   # 1 good
        f"2\t{b64(GOOD)[:-3]}",                              # 2 cut-short base64
        "3\t!!not*base64!!",                                # 3 foreign characters
        f"4\t{b64(b'<html><body>busy</body></html>')}",      # 4 HTML instead of an image
        f"5\t{b64(truncated)}",                              # 5 truncated JPEG
        "6",                                                 # 6 no tab
        "",                                                  # 7 blank
        f"1\t{b64(GOOD)}",                                   # 8 duplicate id
        f"7\t{b64(jpeg_bytes(fmt='PNG'))}",                  # 9 good PNG
        f"8\t{b64(jpeg_bytes(fmt='PNG')[:-20])}",            # 10 truncated PNG
        f"9\t{b64(jpeg_bytes(fmt='BMP')[:40])}",             # 11 truncated BMP (decoded to check)
        f"10\t{b64(GOOD)}\textra",                           # 12 three fields
    ]
    text_lines = [
        '{"text_id": 100, "text": "红色杯子", "image_ids": [1, 7]}',   # 1 good, two pairs
        '{"text_id": 101, "text": "蓝色", "image_ids": [1, 404]}',     # 2 one pair kept, one missing
        '{"text_id": 102, "text": "坏", "image_ids": [5]}',            # 3 points to a skipped image
        '{"text_id": 103, "text": "断',                                # 4 malformed JSON
        '{"text_id": 104, "image_ids": [1]}',                          # 5 missing field
        '{"text_id": 105, "text": "x", "image_ids": "1"}',             # 6 wrong type
        '{"text_id": 100, "text": "重复", "image_ids": [1]}',          # 7 duplicate text id
        "",                                                             # 8 blank
        '[1, 2]',                                                       # 9 not an object
    ]
    (data / "train_imgs.tsv").write_text("\n".join(image_lines) + "\n", encoding="utf-8")
    (data / "train_texts.jsonl").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    return {}


EXPECTED_PROBLEMS = [
    ("train_imgs.tsv", 2, "bad_base64"),
    ("train_imgs.tsv", 3, "bad_base64"),
    ("train_imgs.tsv", 4, "undecodable_image"),
    ("train_imgs.tsv", 5, "undecodable_image"),
    ("train_imgs.tsv", 6, "malformed_line"),
    ("train_imgs.tsv", 8, "duplicate_image_id"),
    ("train_imgs.tsv", 10, "undecodable_image"),
    ("train_imgs.tsv", 11, "undecodable_image"),
    ("train_imgs.tsv", 12, "malformed_line"),
    ("train_texts.jsonl", 2, "missing_image"),
    ("train_texts.jsonl", 3, "missing_image"),
    ("train_texts.jsonl", 4, "malformed_json"),
    ("train_texts.jsonl", 5, "missing_field"),
    ("train_texts.jsonl", 6, "bad_field"),
    ("train_texts.jsonl", 7, "duplicate_text_id"),
    ("train_texts.jsonl", 9, "malformed_json"),
]


def problem_keys(problems):
    return sorted((Path(p.file).name, p.line, p.kind) for p in problems)


@pytest.mark.parametrize("verify", ["structure", "decode"])
def test_skip_mode_reports_every_bad_line_and_keeps_the_good_ones(tmp_path, verify):
    write_bad_split(tmp_path / "data")
    report = build_lmdb(tmp_path / "data", "train", tmp_path / "lmdb", on_error="skip", verify=verify)
    assert problem_keys(report.problems) == sorted(EXPECTED_PROBLEMS)
    split = report.splits["train"]
    assert (split.image_lines, split.images_written, split.blank_lines) == (11, 2, 2)
    assert (split.text_lines, split.texts_written, split.pairs_written) == (8, 2, 3)
    # Nothing disappears silently: every line is either written or reported.
    image_problems = [p for p in split.problems if p.file.endswith(".tsv")]
    assert split.images_written + len(image_problems) == split.image_lines
    assert all(p.message for p in split.problems)

    imgs = dict(dump_env(tmp_path / "lmdb" / "train" / "imgs"))
    assert sorted(imgs) == [b"1", b"7", b"num_images"] and imgs[b"num_images"] == b"2"
    pairs = dict(dump_env(tmp_path / "lmdb" / "train" / "pairs"))
    assert [pickle.loads(pairs[str(i).encode()]) for i in range(3)] == [
        (1, 100, "红色杯子"), (7, 100, "红色杯子"), (1, 101, "蓝色")]
    assert pairs[b"num_samples"] == b"3"


def test_problem_messages_name_the_image_or_text(tmp_path):
    write_bad_split(tmp_path / "data")
    report = build_lmdb(tmp_path / "data", "train", tmp_path / "lmdb")
    by_line = {(Path(p.file).name, p.line): p for p in report.problems}
    assert "image 5" in by_line[("train_imgs.tsv", 5)].message
    assert "404" in by_line[("train_texts.jsonl", 2)].message
    assert "train_texts.jsonl:4: malformed_json" in str(by_line[("train_texts.jsonl", 4)])
    as_json = report.to_dict()
    assert as_json["problem_count"] == len(EXPECTED_PROBLEMS)
    assert as_json["splits"]["train"]["problem_counts"]["missing_image"] == 2
    assert "16 problems" in report.summary()


def test_fail_mode_checks_everything_then_writes_nothing(tmp_path, synthetic_data):
    data = tmp_path / "data"
    write_bad_split(data)
    # A good second split next to the bad one, and an earlier LMDB that must survive.
    for name in ("valid_imgs.tsv", "valid_texts.jsonl"):
        (data / name).write_bytes((synthetic_data.data_dir / name).read_bytes())
    out = tmp_path / "lmdb"
    build_lmdb(data, "valid", out)
    before = dump_env(out / "valid" / "pairs")

    with pytest.raises(LmdbBuildError) as caught:
        build_lmdb(data, "train,valid", out, on_error="fail")
    report = caught.value.report
    assert report.failed and not report.ok
    assert problem_keys(report.problems) == sorted(EXPECTED_PROBLEMS)
    assert "train_imgs.tsv:2: bad_base64" in str(caught.value)
    assert set(report.splits) == {"train", "valid"}  # the good split was checked too
    assert not (out / "train").exists()
    assert sorted(p.name for p in out.iterdir()) == ["valid"]
    assert dump_env(out / "valid" / "pairs") == before


def test_fail_mode_on_clean_files_builds(synthetic_data, tmp_path):
    report = build_lmdb(synthetic_data.data_dir, ["test"], tmp_path, on_error="fail")
    assert report.ok and report.splits["test"].images_written == synthetic_data.manifest["splits"]["test"]["images"]


def test_missing_files_and_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_lmdb(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="train_imgs.tsv"):
        build_lmdb(tmp_path, "train")
    with pytest.raises(ValueError, match="on_error"):
        build_lmdb(tmp_path, "train", on_error="ignore")
    with pytest.raises(ValueError, match="no split"):
        build_lmdb(tmp_path, " , ")


# ---------------------------------------------------------------- bytes after the end marker

def photo_bytes(fmt: str = "JPEG", size=(400, 300)) -> bytes:
    image = Image.new("RGB", size)
    for x in range(0, size[0], 20):
        for y in range(0, size[1], 20):
            image.paste(((x * 3) % 256, (y * 5) % 256, (x + y) % 256), (x, y, x + 20, y + 20))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def with_thumbnail(jpeg: bytes) -> bytes:
    """The JPEG with a small JPEG (end marker included) inside an APP15 segment after SOI, as
    an EXIF thumbnail sits in APP1."""
    thumbnail = photo_bytes(size=(16, 16))
    return jpeg[:2] + b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + jpeg[2:]


def tail(size: int, seed: int) -> bytes:
    """Bytes as a motion photo's video or appended metadata: random, with end markers inside."""
    rng = random.Random(seed)
    data = bytearray(rng.getrandbits(8) for _ in range(size))
    for at in range(0, size - 1, 300):
        data[at:at + 2] = b"\xff\xd9"
    return bytes(data)


JPEG, PNG = photo_bytes(), photo_bytes("PNG")
# name -> (bytes, trailing byte count when complete, or None when cut short)
TRAILING_CASES = {
    "jpeg": (JPEG, 0),
    "jpeg+64": (JPEG + tail(64, 1), 64),
    "jpeg+700": (JPEG + tail(700, 2), 700),
    "jpeg+5000": (JPEG + tail(5000, 3), 5000),
    "jpeg+zero padding": (JPEG + bytes(4096), 4096),
    "jpeg with thumbnail+900": (with_thumbnail(JPEG) + tail(900, 4), 900),
    "png": (PNG, 0),
    "png+48": (PNG + tail(48, 5), 48),
    "png+5000": (PNG + tail(5000, 6), 5000),
    "jpeg cut in half": (JPEG[: len(JPEG) // 2], None),
    "jpeg without EOI": (JPEG[:-2], None),
    "jpeg with thumbnail cut short": (with_thumbnail(JPEG)[: len(JPEG) // 2 + 600], None),
    "png cut short": (PNG[:-100], None),
    "png without IEND": (PNG[:-12], None),
}


@pytest.mark.parametrize("name", list(TRAILING_CASES))
def test_lmdb_checks_and_image_validation_agree_on_tails_and_truncation(name):
    from services.trainer.data.lmdb_build import check_image_line
    from shared.image_validation import InvalidImage, inspect_image

    data, expected = TRAILING_CASES[name]
    for verify in ("structure", "decode"):
        verdict = check_image_line(base64.b64encode(data), verify)
        if expected is None:
            assert verdict.problem is not None and verdict.problem[0] == "undecodable_image", verify
            assert "truncated" in verdict.problem[1]
        else:
            assert verdict.problem is None, (verify, verdict)
            assert verdict.trailing_bytes == expected
    # The crawler's and the cache's validation accept and refuse the same files.
    if expected is None:
        with pytest.raises(InvalidImage, match="truncated"):
            inspect_image(data)
    else:
        assert inspect_image(data).trailing_bytes == expected


def test_images_with_trailing_bytes_are_kept_byte_identical_to_cn_clip_build(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    complete = {name: case for name, case in TRAILING_CASES.items() if case[1] is not None}
    ids = {name: 100 + index for index, name in enumerate(complete)}
    # Both base64 alphabets, as MUGE files have both.
    encoders = (base64.urlsafe_b64encode, base64.b64encode)
    (data / "train_imgs.tsv").write_text("".join(
        f"{ids[name]}\t{encoders[ids[name] % 2](raw).decode()}\n" for name, (raw, _) in complete.items()))
    (data / "train_texts.jsonl").write_text("".join(
        json.dumps({"text_id": ids[name], "text": f"商品 {name}", "image_ids": [ids[name]]}, ensure_ascii=False)
        + "\n" for name in complete))
    theirs = tmp_path / "theirs"
    run_cn_clip_build(data, "train", theirs)
    for verify in ("structure", "decode"):
        out = tmp_path / f"ours-{verify}"
        report = build_lmdb(data, "train", out, verify=verify)
        assert report.ok, report.summary()
        split = report.splits["train"]
        assert split.images_written == len(complete) and split.pairs_written == len(complete)
        for part in ("imgs", "pairs"):
            assert dump_env(out / "train" / part) == dump_env(theirs / "train" / part), (verify, part)
        # Each tail is a note with its size, not a problem.
        expected_notes = sorted((index + 1, f"{count} bytes") for index, (_, count) in enumerate(complete.values())
                                if count)
        assert sorted((n.line, n.message.split(": ")[1].split(" after")[0]) for n in split.notes) == expected_notes
        assert {n.kind for n in split.notes} == {"trailing_bytes"}
        assert report.to_dict()["splits"]["train"]["note_counts"] == {"trailing_bytes": len(expected_notes)}
        assert "note: " in report.summary() and "truncated" not in report.summary()


# ---------------------------------------------------------------- command line

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.trainer.cli", "build-lmdb", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_skip_prints_and_writes_the_report(tmp_path):
    write_bad_split(tmp_path / "data")
    result = run_cli("--data_dir", str(tmp_path / "data"), "--splits", "train")
    assert result.returncode == 0, result.stderr
    assert "train_imgs.tsv:5: undecodable_image" in result.stdout
    report = json.loads((tmp_path / "data" / "lmdb" / "build_report.json").read_text())
    assert report["problem_count"] == len(EXPECTED_PROBLEMS) and not report["failed"]
    lines = {(Path(p["file"]).name, p["line"]) for p in report["splits"]["train"]["problems"]}
    assert ("train_texts.jsonl", 7) in lines


def test_cli_fail_exits_non_zero(tmp_path):
    write_bad_split(tmp_path / "data")
    out = tmp_path / "out"
    result = run_cli("--data-dir", str(tmp_path / "data"), "--splits", "train", "--lmdb-dir", str(out),
                     "--on-error", "fail", "--report", str(tmp_path / "r.json"))
    assert result.returncode == 1
    assert "build failed" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["failed"] is True
    assert not (out / "train").exists()
    missing = run_cli("--data_dir", str(tmp_path / "nowhere"), "--splits", "train")
    assert missing.returncode == 2 and "does not exist" in missing.stdout
