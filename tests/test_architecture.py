"""Layering rules from docs/architecture.md, held by reading each module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sextant"

# package -> packages it must never import (data flows one way: spec <- catalog, cost <- train <- validate <- cli)
FORBIDDEN = {
    "spec": {"catalog", "cost", "train", "serve", "validate", "cli"},
    "cost": {"catalog", "train", "serve", "validate", "cli"},
    "catalog": {"cost", "train", "serve", "validate", "cli"},
    "train": {"serve", "validate", "cli"},
    "serve": {"plan", "validate", "cli", "calibrate", "measure"},
    "validate": {"cli"},
    "calibrate": {"train", "validate", "plan", "cli"},
    "measure": {"validate", "plan", "cli"},
}
#: The only packages that may import PyTorch (an optional extra: everything else runs without it).
TORCH_PACKAGES = {"calibrate", "measure"}
UI_LIBRARIES = {"typer", "rich", "click"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules():
    return sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_layering(path: Path) -> None:
    package = path.relative_to(SRC).parts[0]
    imports = imported_modules(path)
    for banned in FORBIDDEN.get(package, set()):
        offenders = [m for m in imports if m == f"sextant.{banned}" or m.startswith(f"sextant.{banned}.")]
        assert not offenders, f"{path.relative_to(SRC)} ({package}) imports {offenders}"
    if package != "cli":
        ui = [m for m in imports if m.split(".")[0] in UI_LIBRARIES]
        assert not ui, f"{path.relative_to(SRC)}: only the CLI may import {ui}"
    torch = [m for m in imports if m.split(".")[0] == "torch"]
    assert package in TORCH_PACKAGES or not torch, f"{path.relative_to(SRC)} imports torch; only calibrate/measure may"


def test_no_module_too_large() -> None:
    big = [(p.relative_to(SRC), n) for p in modules() if (n := len(p.read_text().splitlines())) > 600]
    assert not big, f"split these modules (over 600 lines): {big}"
