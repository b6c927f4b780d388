"""Built-in models and HuggingFace config.json import (placeholder: being written)."""

from __future__ import annotations

from sextant.spec.model import ModelSpec


def model_names() -> list[str]:
    raise NotImplementedError


def get_model(name_or_path: str) -> ModelSpec:
    raise NotImplementedError
