"""Argument types and option groups that several subcommands share, so each check and each
message is written once."""
from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def weight(text: str) -> float:
    """An ensemble member's weight."""
    try:
        return non_negative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a weight must be a finite number >= 0, got {text}") from None


def add_online_arguments(parser: argparse.ArgumentParser, batches: str) -> argparse._ArgumentGroup:
    """--online off|live|cache plus the prototype's --online-learning [--online-cache]."""
    online = parser.add_argument_group("online learning")
    online.add_argument("--online", choices=("off", "live", "cache"), default=None,
                        help=f"learn from crawled images of each {batches} batch's queries (default off)")
    online.add_argument("--online-learning", action="store_true", help="same as --online live")
    online.add_argument("--online-cache", action="store_true",
                        help="with --online-learning: same as --online cache")
    return online


def online_mode(args: argparse.Namespace) -> str:
    """The online mode the options ask for; ValueError when they contradict each other."""
    legacy = None
    if args.online_learning:
        legacy = "cache" if args.online_cache else "live"
    elif args.online_cache:
        raise ValueError("--online-cache needs --online-learning (or use --online cache)")
    if args.online is not None and legacy is not None and args.online != legacy:
        spelled = "--online-learning" + (" --online-cache" if args.online_cache else "")
        raise ValueError(f"--online {args.online} contradicts {spelled}")
    return args.online or legacy or "off"
