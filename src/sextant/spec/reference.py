"""The scenario keys as a Markdown reference, generated from the specs themselves (their types,
defaults, bounds and descriptions), so the documentation cannot drift from what is accepted.

``python scripts/write_scenario_reference.py`` writes docs/scenario-keys.md; a test fails when the
file differs from what this module generates.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (list, dict):
        return f"{origin.__name__} of " + ", ".join(_type_name(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    words = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(meta, attr, None)
            if value is not None:
                whole = isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000)
                words.append(f"{sign} {value:,.0f}" if whole else f"{sign} {value:g}")
    return ", ".join(words)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{value}`" if value is not None else "none"


def _comments(kind: type[BaseModel]) -> dict[str, str]:
    """The ``#:`` comments written above a class's fields (the codebase's field documentation)."""
    try:
        source = inspect.getsource(kind)
    except (OSError, TypeError):
        return {}
    found, pending = {}, []
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = re.match(r"([a-z_][a-z0-9_]*)\s*:", text)
        if match and pending:
            found[match.group(1)] = " ".join(pending)
        pending = []
    return found


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every spec model reachable from its fields, in order of first appearance."""
    found: list[type[BaseModel]] = []

    def visit(kind: type[BaseModel]) -> None:
        if kind in found:
            return
        found.append(kind)
        for field in kind.model_fields.values():
            stack = [field.annotation]
            while stack:
                item = stack.pop()
                if isinstance(item, type) and issubclass(item, BaseModel):
                    visit(item)
                stack.extend(typing.get_args(item))

    visit(root)
    return found


def markdown(root: type[BaseModel], title: str, skip: tuple[type[BaseModel], ...] = ()) -> str:
    """One table per section: key, type, default, bounds and what it means."""
    lines = [f"## {title}", ""]
    for kind in _models(root):
        if kind in skip:
            continue
        doc = (kind.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += [f"### {kind.__name__}", "", doc, "", "| key | type | default | bounds | meaning |",
                  "|---|---|---|---|---|"]
        comments = _comments(kind)
        for name, field in kind.model_fields.items():
            meaning = (field.description or comments.get(name, "")).replace("\n", " ").replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {_bounds(field)} "
                         f"| {meaning} |")
        lines.append("")
    return "\n".join(lines)


def scenario_reference() -> str:
    """docs/scenario-keys.md: the serving and the training scenario keys (sections both share,
    such as the hardware and an inline model, are listed once, under serving)."""
    from sextant.spec.scenario import TrainScenario
    from sextant.spec.serving import ServeScenario

    head = ("# Scenario keys\n\nGenerated from the specs by `python scripts/write_scenario_reference.py`; do not "
            "edit by hand (tests/test_scenario_reference.py fails when it is stale). docs/scenarios.md explains "
            "the training scenario with an example. An inline `model:` takes the keys of [ModelSpec](#modelspec); "
            "the bounds come from src/sextant/spec/limits.py.\n")
    serving = markdown(ServeScenario, "Serving scenario (`predict serve`, `plan serve`)")
    training = markdown(TrainScenario, "Training scenario (`predict train`, `plan train`)",
                        skip=tuple(_models(ServeScenario)))
    return f"{head}\n{serving}\n{training}".rstrip() + "\n"
