"""Layering rules from docs/architecture.md, held by reading each module's imports and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sextant"

#: Each package and the packages of Sextant's it may import (besides itself and the leaf modules
#: ``errors``, ``units`` and ``files``). Data flows one way, from the bottom up:
#:   spec <- catalog, cost <- resolve <- train, serve <- plan <- validate <- cli
#: A scenario is resolved in ``resolve`` alone: train, serve and plan never read the catalog;
#: serving never depends on training. The PyTorch side: ``reference`` (the reference model) <-
#: calibrate, measure, which never import each other.
ALLOWED: dict[str, set[str]] = {
    "spec": set(),
    "catalog": {"spec"},
    "cost": {"spec"},
    "resolve": {"spec", "catalog", "cost"},
    "train": {"spec", "cost", "resolve"},
    "serve": {"spec", "cost", "resolve"},
    "plan": {"spec", "cost", "resolve", "train", "serve"},
    "validate": {"spec", "catalog", "cost", "resolve", "train", "serve", "plan"},
    "reference": {"spec"},
    "calibrate": {"spec", "catalog", "cost", "resolve", "reference"},
    "measure": {"spec", "cost", "resolve", "train", "reference"},
    "export": {"spec", "catalog", "cost", "resolve", "train", "serve"},
}
LEAVES = {"errors", "units", "files"}
#: The only packages that may import PyTorch (an optional extra: everything else runs without it).
TORCH_PACKAGES = {"calibrate", "measure", "reference"}
UI_LIBRARIES = {"typer", "rich", "click"}
#: Packages whose functions stay short enough to read at once.
SHORT_FUNCTION_PACKAGES = ("cost", "resolve", "train", "serve", "plan", "export")
MAX_FUNCTION_LINES = 80


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports; ``from sextant import catalog`` counts as ``sextant.catalog``."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "sextant":
                names.update(f"sextant.{alias.name}" for alias in node.names)
    return names


def sextant_packages(imports: set[str]) -> set[str]:
    """The packages and top-level modules of Sextant's among ``imports`` (not names such as
    ``sextant.__version__``)."""
    names = {m.split(".")[1] for m in imports if m.startswith("sextant.")}
    return {n for n in names if (SRC / n).is_dir() or (SRC / f"{n}.py").is_file()}


def layering_violations(src: Path) -> list[str]:
    """``path (package) imports target`` for every import the rules above forbid."""
    found = []
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).parts
        package = parts[0].removesuffix(".py")
        if package not in ALLOWED and package not in LEAVES:
            continue  # cli and the package root may import anything
        allowed = ALLOWED.get(package, set()) | LEAVES | {package}
        for target in sorted(sextant_packages(imported_modules(path)) - allowed):
            found.append(f"{path.relative_to(src)} ({package}) imports {target}")
    return found


def long_functions(src: Path, packages=SHORT_FUNCTION_PACKAGES, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for package in packages:
        for path in sorted((src / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found.append(f"{path.relative_to(src)}:{node.name} ({lines} lines)")
    return found


def modules():
    return sorted(p for p in SRC.rglob("*.py"))


def test_every_package_has_a_place_in_the_layering() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages - {"cli"} <= set(ALLOWED), f"place these packages in ALLOWED: {packages - set(ALLOWED) - {'cli'}}"


def test_layering() -> None:
    violations = layering_violations(SRC)
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_libraries(path: Path) -> None:
    package = path.relative_to(SRC).parts[0]
    imports = imported_modules(path)
    if package != "cli":
        ui = [m for m in imports if m.split(".")[0] in UI_LIBRARIES]
        assert not ui, f"{path.relative_to(SRC)}: only the CLI may import {ui}"
    torch = [m for m in imports if m.split(".")[0] == "torch"]
    assert package in TORCH_PACKAGES or not torch, (f"{path.relative_to(SRC)} imports torch; only "
                                                    f"{', '.join(sorted(TORCH_PACKAGES))} may")


def test_no_module_too_large() -> None:
    big = [(p.relative_to(SRC), n) for p in modules() if (n := len(p.read_text().splitlines())) > 600]
    assert not big, f"split these modules (over 600 lines): {big}"


def test_no_function_too_long() -> None:
    long = long_functions(SRC)
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"


def test_the_rules_catch_the_back_edges_they_forbid(tmp_path: Path) -> None:
    """Each back-edge the resolution work removed, written into a copy of a module, is caught:
    serving resolving through training, measure and calibrate importing each other, the planner
    or training reading the catalog, cost importing above itself."""
    edges = {
        "serve/deploy.py": "from sextant.train.predict import build_context",
        "measure/runner.py": "from sextant.calibrate.runner import calibrate",
        "calibrate/benchmarks.py": "from sextant.measure.runner import measure_train",
        "plan/space.py": "from sextant.catalog.frameworks import get_framework",
        "train/step.py": "from sextant.catalog import get_model",
        "cost/layer.py": "from sextant.resolve.train import TrainContext",
        "spec/model.py": "from sextant.cost.params import count_params",
        "resolve/train.py": "from sextant.train.step import evaluate",
    }
    for module, line in edges.items():
        copy = tmp_path / module
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text((SRC / module).read_text() + f"\n{line}\n")
    found = layering_violations(tmp_path)
    for module, line in edges.items():
        target = line.split()[1].split(".")[1]
        assert any(v.startswith(module) and v.endswith(f"imports {target}") for v in found), (module, found)
