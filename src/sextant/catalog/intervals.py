"""The prediction-interval table (``data/intervals.yaml``), written by scripts/fit_intervals.py."""

from __future__ import annotations

from typing import Any

from sextant.catalog._loader import load_yaml


def interval_table() -> dict[str, Any]:
    """``{"level": L, "source": ..., "pools": {pool: {"rows", "low", "high"}}}``."""
    return load_yaml("intervals.yaml")


def memory_bound_table() -> dict[str, Any]:
    """``{"level": L, "upper_ratio": r, "rows", "sources", "source"}``: predicted peak memory times
    ``upper_ratio`` is the ``level`` upper bound (``data/memory_bound.yaml``)."""
    return load_yaml("memory_bound.yaml")
