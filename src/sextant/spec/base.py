"""Shared pydantic configuration: strict, frozen, unknown keys and non-finite numbers rejected."""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a bool (``bool``, ``bool | None``, ``Any``...)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_takes_bool(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    return False


class Spec(BaseModel):
    """Base of every spec: frozen, ``extra="forbid"`` so that a misspelt key is an error, and no
    float may be NaN or infinite (a rate, a length, a price that is not a number is a user error).
    A YAML ``true`` where a number belongs (``gpus: true``) is refused too: pydantic would read
    it as 1."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, name in _keys_without_bool(cls):
                if isinstance(data.get(key), bool):
                    raise ValueError(f"{name} must be a number or a name, not {str(data[key]).lower()}")
        return data


@functools.lru_cache(maxsize=None)
def _keys_without_bool(kind: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """(input key, field name) of every field of ``kind`` whose type admits no bool, worked out
    once per class: the check runs on every spec built."""
    return tuple((field.alias or name, name) for name, field in kind.model_fields.items()
                 if not _takes_bool(field.annotation))
