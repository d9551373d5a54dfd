"""Contrastive loss: formulas, accuracies, and the global-batch gather across two gloo ranks."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from services.trainer.engine.loss import (
    batch_accuracies,
    contrastive_loss,
    dual_softmax_logits,
    gather_features,
)


def _features(n: int = 6, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)


def _reference_clip(image, text, scale):
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    logits = scale * image @ text.t()
    n = logits.shape[0]
    # Written out row by row so it does not share code with the implementation.
    i2t = sum(-logits[i, i] + torch.logsumexp(logits[i], 0) for i in range(n)) / n
    t2i = sum(-logits[i, i] + torch.logsumexp(logits[:, i], 0) for i in range(n)) / n
    return (i2t + t2i) / 2


def test_clip_loss_matches_the_symmetric_cross_entropy():
    image, text = _features()
    out = contrastive_loss(image, text, torch.tensor(12.5), kind="clip")
    assert torch.allclose(out.loss, _reference_clip(image, text, 12.5), atol=1e-5)
    assert out.logits_per_image.shape == (6, 6)


def test_perfectly_aligned_features_give_low_loss_and_full_accuracy():
    image, _ = _features(n=5, dim=32)
    out = contrastive_loss(image, image.clone(), torch.tensor(100.0))
    assert out.loss.item() < 0.05
    assert out.img2txt_acc.item() == 1.0 and out.txt2img_acc.item() == 1.0


def test_batch_accuracies_count_each_direction():
    logits = torch.tensor([[5.0, 1.0, 0.0], [6.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    i2t, t2i = batch_accuracies(logits)
    # rows: 0 ok, 1 picks text 0, 2 ok -> 2/3; columns: 0 picks image 1, 1 picks image 1, 2 ok -> 2/3
    assert i2t.item() == pytest.approx(2 / 3)
    assert t2i.item() == pytest.approx(2 / 3)


def test_dsl_reweights_by_the_prior_along_the_other_axis():
    image, text = _features(n=4)
    scale, tau = 20.0, 0.7
    out = contrastive_loss(image, text, torch.tensor(scale), kind="dsl", dsl_temperature=tau)
    imn, txn = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = scale * imn @ txn.t()
    n = logits.shape[0]
    expected = 0.0
    for mat in (logits, logits.t()):
        weighted = torch.empty_like(mat)
        for i in range(n):
            for j in range(n):
                column = torch.tensor([mat[k, j] / tau for k in range(n)])
                prior = math.exp(mat[i, j] / tau) / column.exp().sum()
                weighted[i, j] = mat[i, j] * prior * n
        expected += sum(-weighted[i, i] + torch.logsumexp(weighted[i], 0) for i in range(n)) / n
    # The two directions are summed (the prototype's scale), not averaged.
    assert torch.allclose(out.loss, torch.as_tensor(expected), atol=1e-4)
    # The accuracies are those of the raw logits, not of the reweighted ones.
    assert torch.equal(out.logits_per_image, logits) or torch.allclose(out.logits_per_image, logits, atol=1e-6)


def _prototype_dsl(image, text, scale, tau):
    """The prototype's dual-softmax loss written out with plain tensor ops in float64:
    prior = exp(L / tau) normalised over each column, L' = L * prior * N, and the
    cross-entropies of both directions added."""
    image = image.double() / image.double().norm(dim=-1, keepdim=True)
    text = text.double() / text.double().norm(dim=-1, keepdim=True)
    logits = scale * image @ text.t()
    n = logits.shape[0]

    def direction(mat):
        prior = torch.exp(mat / tau) / torch.exp(mat / tau).sum(dim=0, keepdim=True)
        weighted = mat * prior * n
        log_probs = weighted - torch.log(torch.exp(weighted).sum(dim=1, keepdim=True))
        return -log_probs.diagonal().mean()

    return direction(logits) + direction(logits.t())


@pytest.mark.parametrize("scale, tau, seed", [(100.0, 1000.0, 1), (14.3, 1000.0, 2), (30.0, 2.0, 3)])
def test_dsl_equals_the_prototypes_formula(scale, tau, seed):
    image, text = _features(n=8, dim=16, seed=seed)
    out = contrastive_loss(image, text, torch.tensor(scale), kind="dsl", dsl_temperature=tau)
    expected = _prototype_dsl(image, text, scale, tau)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    # Not the average of the two directions: that would be half of the prototype's value.
    assert out.loss.item() != pytest.approx(expected.item() / 2, rel=1e-3)


def test_dsl_with_a_large_temperature_tends_to_twice_clip():
    image, text = _features()
    clip = contrastive_loss(image, text, torch.tensor(10.0), kind="clip").loss
    dsl = contrastive_loss(image, text, torch.tensor(10.0), kind="dsl", dsl_temperature=1e6).loss
    sharp = contrastive_loss(image, text, torch.tensor(10.0), kind="dsl", dsl_temperature=0.5).loss
    # clip averages the two directions, dsl sums them as the prototype does.
    assert torch.allclose(2 * clip, dsl, atol=1e-4)
    assert not torch.allclose(2 * clip, sharp, atol=1e-3)


def test_bad_arguments_are_refused():
    image, text = _features()
    with pytest.raises(ValueError, match="unknown loss"):
        contrastive_loss(image, text, torch.tensor(1.0), kind="triplet")
    with pytest.raises(ValueError, match="6 image features but 5 text"):
        contrastive_loss(image, text[:5], torch.tensor(1.0))
    with pytest.raises(ValueError, match="temperature"):
        dual_softmax_logits(torch.ones(2, 2), 0.0)


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(3, 4)
    assert gather_features(x) is x


# --- two ranks ---------------------------------------------------------------------------

DIM_IN, DIM_OUT, PER_RANK = 10, 6, 3


def _problem():
    g = torch.Generator().manual_seed(7)
    weights = {
        "image": torch.randn(DIM_OUT, DIM_IN, generator=g),
        "text": torch.randn(DIM_OUT, DIM_IN, generator=g),
        "scale": torch.tensor(math.log(10.0)),
    }
    images = torch.randn(2 * PER_RANK, DIM_IN, generator=g)
    texts = torch.randn(2 * PER_RANK, DIM_IN, generator=g)
    return weights, images, texts


def _loss_and_grads(weights, images, texts, kind):
    params = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    out = contrastive_loss(images @ params["image"].t(), texts @ params["text"].t(),
                           params["scale"].exp(), kind=kind, dsl_temperature=0.5)
    out.loss.backward()
    return out, {k: p.grad for k, p in params.items()}


def _rank_main(rank: int, init_file: str, kind: str, result_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        weights, images, texts = _problem()
        local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        out, grads = _loss_and_grads(weights, images[local], texts[local], kind)
        # What DDP does with parameter gradients: average over ranks.
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= 2
        torch.save({"loss": out.loss.detach(), "grads": grads, "acc": (out.img2txt_acc, out.txt2img_acc)},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["clip", "dsl"])
def test_two_gloo_ranks_match_one_process_with_the_whole_batch(tmp_path, kind):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), kind, str(tmp_path)), nprocs=2, join=True)
    weights, images, texts = _problem()
    single, single_grads = _loss_and_grads(weights, images, texts, kind)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["loss"], single.loss.detach(), atol=1e-6)
        for name, grad in single_grads.items():
            assert torch.allclose(result["grads"][name], grad, atol=1e-6), (rank, name)
        assert result["acc"][0].item() == pytest.approx(single.img2txt_acc.item())
        assert result["acc"][1].item() == pytest.approx(single.txt2img_acc.item())
