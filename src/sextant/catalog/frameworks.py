"""Framework presets (``data/frameworks.yaml``): strategy and workload defaults of a framework era."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from sextant.catalog._loader import load_yaml, lookup

M = TypeVar("M", bound=BaseModel)


def fill_unset(scenario: M, preset: dict[str, Any], sections: tuple[str, ...]) -> M:
    """``scenario`` with each section's fields that it left unset taken from ``preset``: a
    framework preset supplies defaults, never overrides what a user or a ledger row stated."""
    updates = {}
    for section in sections:
        current = getattr(scenario, section)
        unset = {k: v for k, v in preset.get(section, {}).items() if k not in current.model_fields_set}
        if unset:
            updates[section] = type(current).model_validate({**current.model_dump(exclude_unset=True), **unset})
    return scenario.model_copy(update=updates) if updates else scenario


def get_framework(name: str) -> dict[str, Any]:
    """``{"strategy": {...}, "workload": {...}, "source": ...}`` for a framework preset."""
    return lookup(load_yaml("frameworks.yaml"), name, kind="framework", field="framework")


def get_serving_framework(name: str) -> dict[str, Any]:
    """``{"scheduler": {...}, "deployment": {...}, "source": ...}`` for a serving framework preset."""
    return lookup(load_yaml("serving_frameworks.yaml"), name, kind="serving framework", field="framework")
