"""`cnclip train`: fine-tune Chinese-CLIP. Run it under ``torchrun`` for several ranks.

Every option is a field of shared/options.py (``TrainOptions`` and ``TrainRunOptions``); names
and defaults follow the prototype's params.py, so its ``train.sh`` arguments work unchanged
(``--online-learning`` / ``--online-cache`` included, as spellings of ``--online``).
"""
from __future__ import annotations

import argparse
import sys

from services.trainer.commands.options_cli import OptionsError, add_model_options, config_from_args

GROUPS = {"TrainOptions": "data and schedule", "ModelOptions": "model", "OptimOptions": "optimisation",
          "OnlineOptions": "online learning", "TrainRunOptions": "output", "TrainConfig": "output"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from services.trainer.train.config import TrainConfig

    add_model_options(parser, TrainConfig, GROUPS)


def config_from(args: argparse.Namespace):
    from services.trainer.train.config import TrainConfig

    return config_from_args(args, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from services.trainer.train.config import ConfigError

    try:
        config = config_from(args)
    except (OptionsError, ConfigError) as exc:
        print(f"cnclip train: error: {exc}", file=sys.stderr)
        return 2

    from services.trainer.train.run import run_training

    return run_training(config)
