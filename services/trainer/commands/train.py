"""`cnclip train`: fine-tune Chinese-CLIP. Run it under ``torchrun`` for several ranks.

Options and defaults follow the prototype's params.py, so its ``train.sh`` arguments work
unchanged (``--online-learning`` / ``--online-cache`` included, as spellings of ``--online``).
"""
from __future__ import annotations

import argparse
import os
import sys

from services.trainer.commands.arguments import (
    add_online_arguments, non_negative_float, non_negative_int, online_mode, positive_float, positive_int,
)
from shared.settings import common_settings

PRECISIONS = ("amp", "bf16", "fp16", "fp32")
DEFAULT_MAX_EPOCHS = 32  # Chinese-CLIP's default when neither length is given


def _interval(text: str) -> int | None:
    """A step/epoch interval; -1 (or 0, or 'none') disables it."""
    if text.lower() in ("none", "null"):
        return None
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be a positive interval or -1 (never), got {value}")
    return value if value > 0 else None


def _beta(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--train-data", required=True, help="LMDB dir of the training split (.../lmdb/train)")
    data.add_argument("--val-data", default=None, help="LMDB dir of the validation split; none disables validation")
    data.add_argument("--num-workers", type=non_negative_int, default=4, help="DataLoader workers for training")
    data.add_argument("--valid-num-workers", type=non_negative_int, default=1, help="DataLoader workers for validation")
    data.add_argument("--context-length", type=positive_int, default=52,
                      help="text length in tokens, [CLS] and [SEP] included")
    data.add_argument("--use-augment", action="store_true", help="AutoAugment and random erasing on training images")

    out = parser.add_argument_group("output")
    out.add_argument("--logs", default=None,
                     help="where runs are stored (default: $DATAPATH/experiments, the data root's experiments/)")
    out.add_argument("--name", default="train_clip", help="this run's folder under --logs")
    out.add_argument("--log-interval", type=positive_int, default=10, help="steps between progress logs/events")
    out.add_argument("--report-training-batch-acc", action="store_true",
                     help="report image->text and text->image accuracy of training batches")
    out.add_argument("--save-step-frequency", type=_interval, default=None,
                     help="save a checkpoint every N steps (-1: never)")
    out.add_argument("--save-epoch-frequency", type=positive_int, default=1, help="save a checkpoint every N epochs")
    out.add_argument("--events", default=None, help="write progress events as JSON lines to this file (rank 0)")
    out.add_argument("--job-id", default=os.environ.get("CNCLIP_JOB_ID"), help=argparse.SUPPRESS)
    out.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    out.add_argument("--trace-batches", default=None,
                     help="append the text ids of every training batch to PATH.rank<R>.jsonl (data-order audit)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=positive_int, default=128, help="training batch size per rank")
    opt.add_argument("--valid-batch-size", type=positive_int, default=128, help="validation batch size per rank")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=positive_int, default=None, help="optimizer steps to train for")
    length.add_argument("--max-epochs", type=positive_int, default=None,
                        help=f"epochs to train for (default {DEFAULT_MAX_EPOCHS} when --max-steps is not given)")
    opt.add_argument("--valid-step-interval", type=_interval, default=None,
                     help="validate every N steps (default: never)")
    opt.add_argument("--valid-epoch-interval", type=_interval, default=1,
                     help="validate every N epochs (-1: never)")
    opt.add_argument("--lr", type=positive_float, default=5e-5)
    opt.add_argument("--wd", type=non_negative_float, default=0.001, help="weight decay (not on biases, norms, logit scale)")
    opt.add_argument("--warmup", type=non_negative_int, default=100, help="linear warmup steps before the cosine decay")
    opt.add_argument("--beta1", type=_beta, default=0.9)
    opt.add_argument("--beta2", type=_beta, default=0.98)
    opt.add_argument("--eps", type=positive_float, default=1e-6)
    opt.add_argument("--accum-freq", type=positive_int, default=1,
                     help="batches per optimizer step (features of the other batches are cached as negatives)")
    opt.add_argument("--precision", choices=PRECISIONS, default="amp",
                     help="amp: fp32 weights, fp16 autocast with loss scaling on CUDA (plain fp32 on the CPU); "
                          "bf16: fp32 weights, bf16 autocast; fp16: fp16 weights (as Chinese-CLIP); fp32")
    opt.add_argument("--loss", choices=("clip", "dsl"), default="clip", help="clip or dual-softmax (dsl)")
    opt.add_argument("--dsl-temperature", type=positive_float, default=1000.0,
                     help="temperature of the dual-softmax prior (1000, as the prototype)")
    opt.add_argument("--seed", type=int, default=123)

    model = parser.add_argument_group("model")
    model.add_argument("--vision-model", default="ViT-B-16")
    model.add_argument("--text-model", default="RoBERTa-wwm-ext-base-chinese")
    model.add_argument("--freeze-vision", action="store_true", help="keep the image tower fixed")
    model.add_argument("--grad-checkpointing", action="store_true")
    model.add_argument("--attn-implementation", choices=("sdpa", "eager", "flash_attention_2"), default=None,
                       help="default: FlashAttention-2 when installed (and not fp32), else SDPA")
    model.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    resume = parser.add_argument_group("resume")
    resume.add_argument("--resume", default=None,
                        help="checkpoint to start from (Chinese-CLIP .pt or a transformers dir); "
                             "default: this run's checkpoints/epoch_latest.pt if it exists")
    resume.add_argument("--reset-data-offset", action="store_true",
                        help="start at the first batch of epoch 0 instead of where the checkpoint stopped")
    resume.add_argument("--reset-optimizer", action="store_true", help="do not restore the optimizer state")

    add_online_arguments(parser, "validation")


def run(args: argparse.Namespace) -> int:
    from services.trainer.train.config import ConfigError, TrainConfig

    try:
        args.online = online_mode(args)
        if args.logs is None:
            args.logs = str(common_settings().data_root / "experiments")
        if args.max_steps is None and args.max_epochs is None:
            args.max_epochs = DEFAULT_MAX_EPOCHS
        config = TrainConfig.from_args(args)
    except (ValueError, ConfigError) as exc:
        print(f"cnclip train: error: {exc}", file=sys.stderr)
        return 2

    from services.trainer.train.loop import run_training

    return run_training(config)
