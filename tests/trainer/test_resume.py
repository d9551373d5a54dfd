"""A run resumed mid-epoch continues with exactly the next batch and ends with exactly the
weights and optimizer state of an uninterrupted run (fp32, no augmentation, two gloo ranks)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainer.test_train_distributed import tiny_args, torchrun_train


def _trace(prefix: Path, rank: int) -> dict[int, list]:
    lines = Path(f"{prefix}.rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["text_ids"] for r in map(json.loads, lines)}


@pytest.mark.slow
def test_resume_mid_epoch_matches_an_uninterrupted_run(synthetic_data, tmp_path):
    # 200 pairs / (2 ranks x 8) -> 13 steps an epoch; the checkpoint at step 5 is mid-epoch,
    # and the resumed run crosses into the next epoch.
    common = ["--batch-size", "8", "--max-steps", "16", "--lr", "2e-3", "--warmup", "3",
              "--log-interval", "4", "--seed", "7"]
    full = torchrun_train(tiny_args(synthetic_data, tmp_path, "full") + common + [
        "--save-step-frequency", "5", "--trace-batches", str(tmp_path / "full_trace")])
    assert full.returncode == 0, full.stderr[-4000:]
    middle = tmp_path / "full" / "checkpoints" / "epoch_1_5.pt"
    assert torch.load(middle, weights_only=True)["step"] == 5

    resumed = torchrun_train(tiny_args(synthetic_data, tmp_path, "resumed") + common + [
        "--resume", str(middle), "--trace-batches", str(tmp_path / "resumed_trace")])
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    for rank in range(2):
        before, after = _trace(tmp_path / "full_trace", rank), _trace(tmp_path / "resumed_trace", rank)
        assert sorted(after) == list(range(6, 17))
        assert after[6] == before[6]  # the exact next batch
        assert all(after[s] == before[s] for s in after)
    # Different ranks read different pairs.
    assert _trace(tmp_path / "full_trace", 0)[1] != _trace(tmp_path / "full_trace", 1)[1]

    a = torch.load(tmp_path / "full" / "checkpoints" / "epoch_latest.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 16)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), (pid, name)
    # ... and training did change the weights after the resume point.
    m = torch.load(middle, weights_only=True)
    assert any(not torch.equal(v, m["state_dict"][k]) for k, v in a["state_dict"].items())
