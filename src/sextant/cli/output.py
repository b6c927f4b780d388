"""JSON output for scripts: strict JSON that any parser reads."""

from __future__ import annotations

import json
import math
from typing import Any

import typer

#: ``--plot FILE``: the picture of a result (sextant.plots), shared by the commands that draw one.
PLOT = typer.Option(None, "--plot", help="Draw the result into this PNG, SVG or PDF file (needs matplotlib: "
                                         "pip install 'sextant-llm[plot]').")


def check_top(top: int) -> None:
    """``--top``: how many ranked results a plan lists and explains (1 to MAX_TOP)."""
    from sextant.errors import SpecError
    from sextant.spec.limits import MAX_TOP

    if not 0 < top <= MAX_TOP:
        raise SpecError(f"must be 1 to {MAX_TOP}, got {top}", field="--top")


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON ``null``): bare ``NaN``
    and ``Infinity`` tokens are not JSON, and strict parsers (``jq``, Go, JavaScript) reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def emit_json(value: Any) -> None:
    """Print ``value`` as indented, strict JSON on standard output."""
    typer.echo(json.dumps(finite(value), indent=2, allow_nan=False))
