"""Fixtures of tiny models, checkpoints and synthetic data sets, shared by the trainer and control tests."""


# --- tiny Chinese-CLIP models and checkpoints ------------------------------------------------
import importlib

import pytest  # noqa: E402


@pytest.fixture()
def tiny_model():
    """A freshly initialised tiny ChineseCLIPModel (seeded, eval mode)."""
    import torch

    from services.trainer.model import create_model

    torch.manual_seed(0)
    return create_model("tiny", "tiny").eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A Chinese-CLIP `.pt` of a seeded tiny model after one AdamW step (epoch 1, step 1)."""
    import torch

    from services.trainer.model import create_model, encode_image, encode_text
    from services.trainer.model.checkpoint import save_checkpoint
    from services.trainer.tokenizer import tokenize

    torch.manual_seed(0)
    model = create_model("tiny", "tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    input_ids, attention_mask = tokenize(["红色圆形", "蓝色条纹方形"])
    image = encode_image(model, torch.randn(2, 3, 64, 64))
    text = encode_text(model, input_ids, attention_mask)
    (image @ text.t()).logsumexp(dim=1).mean().backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("tiny_checkpoint") / "epoch1.pt"
    save_checkpoint(path, model, optimizer, epoch=1, step=1, name="tiny")
    return path


def original_clip(vision, text):
    """Chinese-CLIP's own CLIP (cn_clip 1.6.0) with the dimensions of our tower specs
    (``VisionTower``, ``TextTower``), for comparisons against the original implementation."""
    cn_clip_model = importlib.import_module("cn_clip.clip.model")
    return cn_clip_model.CLIP(
        embed_dim=vision.embed_dim,
        image_resolution=vision.image_size,
        vision_layers=vision.layers,
        vision_width=vision.width,
        vision_patch_size=vision.patch_size,
        vision_head_width=vision.head_width,
        vocab_size=21128,
        text_attention_probs_dropout_prob=0.1,
        text_hidden_act="gelu",
        text_hidden_dropout_prob=0.1,
        text_hidden_size=text.hidden_size,
        text_initializer_range=0.02,
        text_intermediate_size=text.intermediate_size,
        text_max_position_embeddings=512,
        text_num_attention_heads=text.heads,
        text_num_hidden_layers=text.layers,
        text_type_vocab_size=2,
    )


@pytest.fixture()
def cnclip_model_factory():
    """`make(vision: VisionTower, text: TextTower) -> cn_clip.clip.model.CLIP`, in eval mode."""
    return lambda vision, text: original_clip(vision, text).eval()


# --- synthetic MUGE data set and its LMDB ----------------------------------------------------
from dataclasses import dataclass as _dataclass  # noqa: E402
from pathlib import Path as _Path  # noqa: E402
from typing import Any as _Any  # noqa: E402


@_dataclass(frozen=True)
class SyntheticData:
    """A rendered MUGE data set (``data_dir``) with its LMDB (``lmdb_dir/{split}``)."""

    data_dir: _Path
    lmdb_dir: _Path
    manifest: dict[str, _Any]

    def lmdb(self, split: str) -> _Path:
        return self.lmdb_dir / split

    def texts(self, split: str) -> _Path:
        return self.data_dir / f"{split}_texts.jsonl"

    def imgs(self, split: str) -> _Path:
        return self.data_dir / f"{split}_imgs.tsv"

    def unseen_text_ids(self, split: str) -> set:
        return {t["text_id"] for t in self.manifest["texts"][split] if not t["seen"]}

    def seen_text_ids(self, split: str) -> set:
        return {t["text_id"] for t in self.manifest["texts"][split] if t["seen"]}


@pytest.fixture(scope="session")
def make_synthetic_data(tmp_path_factory):
    """``make(n_train=200, n_valid=60, n_test=60, seed=0, image_size=64, **options)`` renders
    a synthetic data set and builds its LMDB once per distinct set of arguments per session."""
    from services.trainer.data.lmdb_build import build_lmdb
    from shared.synthetic.dataset import make_synthetic_dataset

    made: dict[tuple, SyntheticData] = {}

    def make(n_train: int = 200, n_valid: int = 60, n_test: int = 60, seed: int = 0,
             image_size: int = 64, **options: _Any) -> SyntheticData:
        key = (n_train, n_valid, n_test, seed, image_size, tuple(sorted(options.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(f"synthetic_{n_train}_{n_valid}_{n_test}_s{seed}_{image_size}px")
            manifest = make_synthetic_dataset(root / "data", n_train, n_valid, n_test, seed=seed,
                                              image_size=image_size, **options)
            report = build_lmdb(root / "data", "train,valid,test", root / "lmdb", on_error="fail")
            assert report.ok, report.summary()
            made[key] = SyntheticData(root / "data", root / "lmdb", manifest)
        return made[key]

    return make


@pytest.fixture(scope="session")
def synthetic_data(make_synthetic_data) -> SyntheticData:
    """The default small set: 200 train pairs, 60 valid and 60 test queries, 64 px, seed 0,
    purple and shoes held out of training."""
    return make_synthetic_data()


@pytest.fixture(scope="session")
def synthetic_data_dir(synthetic_data) -> _Path:
    return synthetic_data.data_dir


@pytest.fixture(scope="session")
def synthetic_lmdb_dir(synthetic_data) -> _Path:
    """LMDB root: ``synthetic_lmdb_dir / "train"`` etc."""
    return synthetic_data.lmdb_dir
