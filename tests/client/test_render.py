"""What a person reads while following a job: the progress line and the closing summary."""
from __future__ import annotations

from services.client.render import Progress, summary
from shared.messages import JobEvent


def _feed(progress: Progress, *events: tuple[str, float, dict]) -> list[str]:
    kept = []
    for kind, ts, data in events:
        line = progress.add(JobEvent(type=kind, ts=ts, data=data))
        if line:
            kept.append(line)
    return kept


def test_progress_line_has_eta_loss_validation_and_online_figures():
    progress = Progress()
    kept = _feed(progress,
                 ("train_step", 100.0, {"step": 10, "total_steps": 110, "loss": 2.345678, "samples_per_s": 812.4}),
                 ("train_step", 110.0, {"step": 20, "total_steps": 110, "loss": 1.5, "samples_per_s": 800.0}),
                 ("validation", 111.0, {"step": 20, "r1": 12.5, "r5": 40.0, "r10": 55.0, "mr": 35.83333333}),
                 ("online", 112.0, {"pairs": 6, "missing": {"timeout": 2, "blocked": 1}, "loss": 0.731}),
                 ("online", 113.0, {"pairs": 4, "missing": {}, "loss": 0.5}),
                 ("online_pass", 114.0, {"split": "valid", "pass_index": 0, "pairs": 10, "queries": 12, "steps": 2,
                                         "missing": {"timeout": 2, "blocked": 1}}),
                 ("log", 115.0, {"level": "output", "message": "[rank0]: RuntimeError: boom"}))
    # 10 steps took 10 s: the 90 left take 90 s.
    assert progress.line() == ("step 20/110 (18%) | ETA 1m 30s | loss 1.5 | 800 samples/s | val R@1 12.5  MR 35.8 | "
                               "online 10 pairs, 3 missing, loss 0.5")
    assert kept == ["validation @ step 20: R@1 12.5  R@5 40.0  R@10 55.0  MR 35.8",
                    "online pass 0 (valid): 10 pairs for 12 queries, 2 steps, missing: timeout 2, blocked 1"]
    assert progress.cause == "[rank0]: RuntimeError: boom"


def test_summary_rounds_the_headline_figures_and_says_where_the_outputs_are():
    job = {"id": "j1", "kind": "train", "state": "succeeded", "reason": "", "created_at": 0.0,
           "started_at": 10.0, "finished_at": 145.0, "spec": {"name": "muge"},
           "result": {"metrics": {"step": 200, "r1": 31.25, "r5": 60.0, "r10": 71.875, "mr": 44.27083333333333,
                                  "loss": 0.123456},
                      "paths": {"run_dir": "/data/experiments/muge", "latest": "/data/experiments/muge/checkpoints/epoch_latest.pt",
                                "checkpoints": [f"/data/experiments/muge/checkpoints/epoch{i}.pt" for i in range(40)]},
                      "steps": 200}}
    lines = summary(job)
    assert lines == ["job j1 (train, muge) succeeded after 2m 15s",
                     "  last validation @ step 200: R@1 31.2  R@5 60.0  R@10 71.9  MR 44.3  loss 0.1235",
                     "  steps: 200",
                     "  outputs: /data/experiments/muge (40 checkpoints; latest: /data/experiments/muge/checkpoints/epoch_latest.pt)"]
    failed = {**job, "state": "failed", "reason": "trainer exited with status 1", "result": {},
              "error": "Traceback (most recent call last):\nValueError: bad shape\n"
                       "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n  exitcode : 1"}
    assert summary(failed)[-1] == "  cause: ValueError: bad shape"
    predicted = {**job, "kind": "predict", "spec": {}, "result": {"metrics": {"r1": 10.0, "mr": 20.0},
                                                                  "paths": ["/data/experiments/results/j1_predictions.jsonl"]}}
    assert summary(predicted)[1:] == ["  metrics: R@1 10.0  MR 20.0",
                                      "  outputs: /data/experiments/results/j1_predictions.jsonl"]
