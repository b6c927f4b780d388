"""Shared pydantic configuration: strict, frozen, unknown keys rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every spec: frozen, ``extra="forbid"`` so that a misspelt key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
