"""Command-line options generated from the option models of shared/options.py.

Each field becomes ``--field-name``; argparse only collects strings (and flags) and pydantic
does every conversion, bound and cross-field check, so the command line cannot drift from the
job specs or from the trainer's settings. Defaults are not given to argparse at all: an option
left out is left out of the model's input, and the model's own default applies.

Rules: a bool defaulting to False is a flag (``--use-augment``), one defaulting to True takes
``on|off``; a Literal lists its choices; a list takes one or more values. The prototype's
``--online-learning [--online-cache]`` are accepted as spellings of ``--online``, and
``--options-file FILE`` (JSON, what the job runner writes) supplies values that explicit
options override.
"""
from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.options import LEGACY_ONLINE_FLAGS, online_from_legacy

ON_OFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}


class OptionsError(ValueError):
    """Options that cannot make a run; the message names the option."""


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return annotation


def _choices(annotation: Any) -> tuple[str, ...] | None:
    annotation = _strip_optional(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(v) for v in typing.get_args(annotation))
    return None


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(_strip_optional(annotation)) is list


def _help(field) -> str:
    text = field.description or ""
    if field.is_required():
        return f"{text} (required)"
    default = field.get_default(call_default_factory=True)
    if default is None or default == [] or isinstance(default, bool):
        return text
    return f"{text} (default {default})"


def declared_by(model: type[BaseModel], name: str) -> str:
    """The name of the class in ``model``'s bases that declares field ``name``."""
    for klass in model.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass.__name__
    return model.__name__


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel],
                      groups: dict[str, str]) -> None:
    """Add one option per field of ``model``, grouped (in ``groups``' order) by the option
    class that declares it."""
    sections = {klass: parser.add_argument_group(title) for klass, title in groups.items()}
    for name, field in model.model_fields.items():
        group = sections.get(declared_by(model, name)) or parser
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field)}
        default = field.get_default(call_default_factory=True) if not field.is_required() else None
        if field.annotation is bool and default is False:
            kwargs["action"] = "store_true"
        elif field.annotation is bool:
            kwargs.update(choices=("on", "off"), type=str.lower)
        elif _is_list(field.annotation):
            kwargs["nargs"] = "+"
        else:
            choices = _choices(field.annotation)
            if choices:
                kwargs["choices"] = choices
            else:
                kwargs["metavar"] = name.upper()
        group.add_argument(flag_of(name), **kwargs)
    if "online" in model.model_fields:
        online = sections.get("OnlineOptions") or parser
        online.add_argument(LEGACY_ONLINE_FLAGS[0], dest="online_learning", action="store_true",
                            default=False, help="same as --online live (the prototype's spelling)")
        online.add_argument(LEGACY_ONLINE_FLAGS[1], dest="online_cache", action="store_true", default=False,
                            help="with --online-learning: same as --online cache")
    parser.add_argument("--options-file", default=None, metavar="JSON",
                        help="read option values from this JSON file (explicit options win)")


def given_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The values the command line (and --options-file) gave for ``model``'s fields."""
    values: dict[str, Any] = {}
    if getattr(args, "options_file", None):
        try:
            values.update(json.loads(Path(args.options_file).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise OptionsError(f"--options-file {args.options_file}: {exc}") from exc
    for name, field in model.model_fields.items():
        if name not in vars(args):
            continue
        value = getattr(args, name)
        if field.annotation is bool and isinstance(value, str):
            value = ON_OFF[value]
        values[name] = value
    if hasattr(args, "online_learning"):
        try:
            mode = online_from_legacy(values.get("online") if "online" in vars(args) else None,
                                      args.online_learning, args.online_cache)
        except ValueError as exc:
            raise OptionsError(str(exc)) from exc
        if mode is not None:
            values["online"] = mode
    return values


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the option as the user spelled it."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not isinstance(p, int))
        message = item["msg"].removeprefix("Value error, ")
        if where:
            got = item.get("input")
            shown = f" (got {got!r})" if item["type"] not in ("missing", "extra_forbidden") and \
                not isinstance(got, (dict, list)) else ""
            lines.append(f"{flag_of(where)}: {message}{shown}")
        else:
            lines.append(message)
    return "; ".join(lines)


def build(model: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise OptionsError(describe(exc)) from None


def config_from_args(args: argparse.Namespace, model: type[BaseModel]) -> Any:
    """The run settings of a command (``model``: TrainConfig, PredictConfig, IndexConfig) from
    its parsed options: pydantic converts and checks them, the job id comes from the runner's
    environment when not given, and ``check()`` (what only the file system can tell) failing
    is an OptionsError like any other bad option."""
    import os

    values = given_values(args, model)
    values.setdefault("job_id", os.environ.get("CNCLIP_JOB_ID"))
    config = build(model, values)
    try:
        config.check()
    except ValueError as exc:
        raise OptionsError(str(exc)) from None
    return config
