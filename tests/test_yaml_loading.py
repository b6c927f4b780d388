"""Packaged YAML is read through libyaml where PyYAML has it (sextant.files.parse_yaml): the same
objects as PyYAML's pure-Python safe loader, and the same errors."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from sextant.files import parse_yaml


def _packaged_yaml() -> list[Path]:
    root = Path(str(resources.files("sextant")))
    return sorted(root.rglob("*.yaml"))


def test_every_packaged_file_reads_as_the_pure_python_loader_reads_it():
    files = _packaged_yaml()
    assert len(files) >= 20  # the catalog, the ledgers and the scenarios
    for path in files:
        text = path.read_text(encoding="utf-8")
        expected = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 (a safe loader)
        got = parse_yaml(text)
        assert got == expected and repr(got) == repr(expected), path  # repr: the same types too


@pytest.mark.parametrize("text", ["a: 1\nb: [1, 2\nc: 3\n", "a: 1\n  b: 2\n", "x: 'unterminated\n", "- a\nb: 1\n"])
def test_text_that_is_not_yaml_fails_at_the_same_line(text):
    with pytest.raises(yaml.YAMLError) as pure:
        yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506
    with pytest.raises(yaml.YAMLError) as ours:
        parse_yaml(text)
    assert ours.value.problem_mark.line == pure.value.problem_mark.line


def test_objects_pyyaml_builds_only_unsafely_are_refused():
    with pytest.raises(yaml.YAMLError):
        parse_yaml("!!python/object/apply:os.system ['true']")
