"""Reading packaged YAML data and resolving names with helpful errors."""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources
from typing import Any

from sextant.errors import UnknownNameError
from sextant.files import parse_yaml


@cache
def load_yaml(filename: str) -> dict[str, Any]:
    text = resources.files("sextant.catalog").joinpath("data", filename).read_text()
    data = parse_yaml(text)
    if not isinstance(data, dict):
        raise TypeError(f"catalog file {filename} must hold a mapping")
    return data


def lookup(table: dict[str, Any], name: str, *, kind: str, field: str) -> Any:
    """``table[name]`` (case-insensitive), or an :class:`UnknownNameError` listing close names."""
    key = name.strip().lower()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(table))}"
    raise UnknownNameError(f"unknown {kind} '{name}'; {hint}", field=field)
