"""Sextant's user-facing errors.

Every error a user can cause by their input derives from :class:`SextantError`. The CLI turns
each one into a single line naming the field and the fix, and exits with code 2. Anything else
that escapes is a bug in Sextant and keeps its traceback.
"""

from __future__ import annotations


class SextantError(Exception):
    """Base of all user-facing errors. ``field`` names the input at fault, when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.field}: {message}" if self.field else message


class SpecError(SextantError):
    """A value is malformed, out of range, or inconsistent with another value."""


class UnknownNameError(SpecError):
    """A catalog name (GPU, node, model, network) that does not exist."""


class ConfigImportError(SpecError):
    """A HuggingFace config.json that cannot be read or is not a supported architecture."""


class ScenarioError(SpecError):
    """A scenario file that cannot be read: bad YAML, unknown keys, wrong types."""


class InfeasibleError(SextantError):
    """The request is well-formed but cannot run (e.g. nothing fits in memory). ``resource`` names
    what ran out (``GPU memory``, ``KV cache``, ``host memory``, ``NVMe``), for searches that count
    rejections by reason."""

    def __init__(self, message: str, *, field: str | None = None, resource: str = "GPU memory") -> None:
        super().__init__(message, field=field)
        self.resource = resource
