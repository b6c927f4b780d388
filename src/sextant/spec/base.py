"""Shared pydantic configuration: strict, frozen, unknown keys and non-finite numbers rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every spec: frozen, ``extra="forbid"`` so that a misspelt key is an error, and no
    float may be NaN or infinite (a rate, a length, a price that is not a number is a user error)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
