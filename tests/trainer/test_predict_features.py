"""Feature extraction for prediction: batching, normalisation, ids, precision, bad models."""
from __future__ import annotations

import pytest
import torch

from services.trainer.engine.precision import autocast_dtype
from services.trainer.predict.features import image_features, text_features
from tests.trainer.test_predict import build_muge_data


@pytest.fixture(scope="module")
def muge(tmp_path_factory):
    return build_muge_data(tmp_path_factory.mktemp("muge_feat"), seed=5, n_images=13, n_texts=9)


@pytest.fixture()
def datasets(muge):
    from services.trainer.data.lmdb_read import GalleryDataset
    from services.trainer.data.texts import TextsDataset
    from services.trainer.data.transforms import image_transform

    return GalleryDataset(muge["test_lmdb"], image_transform(64)), TextsDataset(muge["test_texts"])


def test_autocast_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("amp", cuda) is torch.float16 and autocast_dtype("fp16", cuda) is torch.float16
    assert autocast_dtype("bf16", cuda) is torch.bfloat16 and autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("amp", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("fp8", cpu)


def test_batched_features_are_normalised_with_ids_in_order(tiny_model, datasets):
    from services.trainer.model import encode_image, encode_text

    gallery, texts = datasets
    images = image_features(tiny_model, gallery, device=torch.device("cpu"), batch_size=4)
    queries = text_features(tiny_model, texts, device=torch.device("cpu"), batch_size=4)
    assert images.ids == gallery.image_ids and queries.ids == texts.text_ids
    assert images.features.shape == (13, tiny_model.config.projection_dim)
    torch.testing.assert_close(images.features.norm(dim=1), torch.ones(13))
    with torch.no_grad():
        one = encode_image(tiny_model, gallery[5][1][None])[0]
        txt = encode_text(tiny_model, texts[2][2][None], texts[2][3][None])[0]
    torch.testing.assert_close(images.features[5], one / one.norm(), atol=1e-5, rtol=0)
    torch.testing.assert_close(queries.features[2], txt / txt.norm(), atol=1e-5, rtol=0)


def test_bf16_autocast_on_cpu_stays_close(tiny_model, datasets):
    gallery, _ = datasets
    exact = image_features(tiny_model, gallery, device=torch.device("cpu"), precision="fp32")
    half = image_features(tiny_model, gallery, device=torch.device("cpu"), precision="bf16")
    assert half.features.dtype == torch.float32
    cosine = (exact.features * half.features).sum(dim=1)
    assert cosine.min() > 0.98 and not torch.equal(exact.features, half.features)


def test_a_model_that_yields_nan_is_reported(tiny_model, datasets):
    gallery, _ = datasets
    with torch.no_grad():
        tiny_model.visual_projection.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinite features"):
        image_features(tiny_model, gallery, device=torch.device("cpu"))
