"""The data root's folders: where jobs write unless told otherwise. Every default place of a
job option (and the output roots a job may write to) is named here once."""
from __future__ import annotations

from pathlib import Path
from typing import Any

EXPERIMENTS = "experiments"              # runs (checkpoints, logs), adapted checkpoints
RESULTS = f"{EXPERIMENTS}/results"       # prediction files
SCORES = "npy_save"                      # ensemble members' saved score matrices
ONLINE_CACHE = "online_cache"            # crawled pictures, per query


def default_places(data_root: str | Path, *, predict_mode: str | None = None) -> dict[str, str]:
    """The default of each place option that is unset: a training run's when ``predict_mode``
    is None, else a prediction's (its output named after the mode, as the prototype did)."""
    root = Path(data_root)
    places = {"online_cache_dir": str(root / ONLINE_CACHE)}
    if predict_mode is None:
        places["logs"] = str(root / EXPERIMENTS)
        return places
    output = "test_predictions.jsonl" if predict_mode == "single" else "test_predictions_ensemble.jsonl"
    places.update(score_dir=str(root / SCORES), output=str(root / RESULTS / output),
                  experiments=str(root / EXPERIMENTS))
    return places


def fill_unset(target: Any, places: dict[str, str]) -> None:
    """Sets each of ``places`` where ``target`` (a config model or an options dict) has it
    unset or None."""
    for name, value in places.items():
        if isinstance(target, dict):
            if target.get(name) is None:
                target[name] = value
        elif getattr(target, name) is None:
            setattr(target, name, value)


INDEX = "index"                          # a run's gallery index: experiments/<name>/index/


def index_dir(experiments: str | Path, name: str) -> Path:
    """Where the gallery index named ``name`` lives (the run folder's ``index/``)."""
    return Path(experiments) / name / INDEX
