"""fsspec storage options from the command line: repeatable ``--storage-option KEY=VALUE``
arguments, parsed and merged into the dict that :func:`octvideo.data.storage.open_url` and the
other storage functions take. Kept apart from ``storage``, whose functions take an argument
named ``storage_options``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any


def parse_storage_option(text: str) -> dict[str, Any]:
    """``key=value`` -> ``{key: value}``: the value is JSON when it parses (numbers, booleans,
    objects), else a string; dots in the key nest (``client_kwargs.endpoint_url=http://...``).
    An argparse ``type``: raises ArgumentTypeError."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as anon=true, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def merge_storage_options(pairs: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """Merge parsed ``--storage-option`` values (later ones win, nested keys merged)."""
    merged: dict[str, Any] = {}
    for pair in pairs or ():
        target, (key, value) = merged, next(iter(pair.items()))
        while isinstance(value, dict) and len(value) == 1 and isinstance(target.get(key), dict):
            target, (key, value) = target[key], next(iter(value.items()))
        target[key] = value
    return merged


def add_storage_option_argument(p: argparse.ArgumentParser) -> None:
    """The repeatable ``--storage-option KEY=VALUE`` argument, parsed into ``storage_options``
    (a list for :func:`merge_storage_options`)."""
    p.add_argument(
        "--storage-option", dest="storage_options", action="append", type=parse_storage_option,
        metavar="KEY=VALUE",
        help="fsspec storage option, repeatable (JSON values; dots nest: client_kwargs.endpoint_url="
        "http://...); credentials otherwise come from the environment (AWS_* for s3://)",
    )
