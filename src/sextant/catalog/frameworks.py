"""Framework presets (``data/frameworks.yaml``): strategy and workload defaults of a framework era."""

from __future__ import annotations

from typing import Any

from sextant.catalog._loader import load_yaml, lookup


def framework_names() -> list[str]:
    return sorted(load_yaml("frameworks.yaml"))


def get_framework(name: str) -> dict[str, Any]:
    """``{"strategy": {...}, "workload": {...}, "source": ...}`` for a framework preset."""
    return lookup(load_yaml("frameworks.yaml"), name, kind="framework", field="framework")


def serving_framework_names() -> list[str]:
    return sorted(load_yaml("serving_frameworks.yaml"))


def get_serving_framework(name: str) -> dict[str, Any]:
    """``{"scheduler": {...}, "deployment": {...}, "source": ...}`` for a serving framework preset."""
    return lookup(load_yaml("serving_frameworks.yaml"), name, kind="serving framework", field="framework")
