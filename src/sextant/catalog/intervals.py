"""The prediction-interval table (``data/intervals.yaml``), written by scripts/fit_intervals.py."""

from __future__ import annotations

from typing import Any

from sextant.catalog._loader import load_yaml


def interval_table() -> dict[str, Any]:
    """``{"level": L, "source": ..., "pools": {pool: {"rows", "low", "high"}}}``."""
    return load_yaml("intervals.yaml")
