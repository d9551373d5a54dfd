"""A job spec from a YAML or JSON file (or standard input) plus ``--set key=value`` overrides.

Values of ``--set`` are read as YAML scalars (``max_steps=6`` is a number, ``online=live`` a
word, ``members=[a.pt, b.pt]`` a list). Keys are checked against the fields the service's own
schema gives the kind, so a misspelt key is refused before anything is sent; what the values
must be is left to the service, which reports it per field."""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from services.client.api import BAD_INPUT, ClientError


def load(source: str) -> dict[str, Any]:
    name = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientError(BAD_INPUT, f"no spec file {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(BAD_INPUT, f"cannot read the spec {name}: {exc}") from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise ClientError(BAD_INPUT, f"the spec {name} is not YAML or JSON{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ClientError(BAD_INPUT, f"the spec {name} must be a mapping of option: value, "
                                     f"not {type(data).__name__}")
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ClientError(BAD_INPUT, f"--set {item!r}: expected key=value")
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key] = raw
    return values


def check_keys(kind: str, keys: list[str], schema: dict[str, Any], flag: str = "--set") -> None:
    known = schema.get("properties")
    if not known:
        return  # the service did not describe this kind: it checks the keys itself
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ClientError(BAD_INPUT, f"{flag} {key}: a {kind} spec has no option {key!r}{hint}")


def build(kind: str, spec: dict[str, Any], sets: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (as ``load`` read it) with the ``--set`` values (as ``parse_set`` read them)
    applied, their keys checked against the kind's ``schema``."""
    spec = dict(spec)
    written = spec.get("kind")
    if written is not None and written != kind:
        raise ClientError(BAD_INPUT, f"the spec says kind {written!r} but is submitted as {kind!r}")
    check_keys(kind, list(sets), schema)
    spec.update(sets)
    return spec
