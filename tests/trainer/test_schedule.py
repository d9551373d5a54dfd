from __future__ import annotations

import pytest
import torch

from services.trainer.train.schedule import warmup_cosine, warmup_cosine_lr


def test_warmup_is_linear_then_cosine_decays_to_zero():
    base, warmup, total = 1e-3, 10, 110
    assert warmup_cosine_lr(0, base, warmup, total) == pytest.approx(base / 10)
    assert warmup_cosine_lr(4, base, warmup, total) == pytest.approx(base / 2)
    assert warmup_cosine_lr(10, base, warmup, total) == pytest.approx(base)
    assert warmup_cosine_lr(60, base, warmup, total) == pytest.approx(base / 2)
    assert warmup_cosine_lr(110, base, warmup, total) == pytest.approx(0.0, abs=1e-12)
    rates = [warmup_cosine_lr(s, base, warmup, total) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_matches_chinese_clip_cosine_lr_and_sets_every_group():
    from cn_clip.training.scheduler import cosine_lr

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]]}], lr=1.0)
    theirs = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    adjust = warmup_cosine(ours, 5e-5, 7, 40)
    reference = cosine_lr(theirs, 5e-5, 7, 40)
    for step in range(40):
        lr = adjust(step)
        assert lr == pytest.approx(reference(step), rel=1e-12)
        assert [g["lr"] for g in ours.param_groups] == [lr, lr]


def test_no_decay_phase_keeps_the_base_rate():
    assert warmup_cosine_lr(5, 0.1, 5, 5) == pytest.approx(0.1)
