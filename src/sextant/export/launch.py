"""What an export produces: a command line to launch, the files it reads, and what was assumed.

The formats (``sextant export --format``) and the framework versions whose options they were
checked against (tests/test_export.py):

* ``megatron``: Megatron-LM ``pretrain_gpt.py`` arguments under ``torchrun``; checked against the
  option table dumped from Megatron-LM's own parser (scripts/dump_framework_options.py).
* ``torchtitan``: ``torchtitan.train`` with a registered ``--module``/``--config`` and CLI
  overrides (torchtitan 0.3 replaced its TOML files with Python config registries; the overrides
  are TOML-free); checked by torchtitan's own ``ConfigManager``.
* ``deepspeed``: a DeepSpeed JSON config plus the ``deepspeed`` launcher's arguments; checked by
  DeepSpeed's own ``DeepSpeedConfig``.
* ``vllm``, ``sglang``, ``trtllm``: ``vllm serve``, ``python -m sglang.launch_server`` and
  ``trtllm-serve`` (with its ``--extra_llm_api_options`` YAML); none installs on a CPU-only
  machine, so each is checked against the options its source declares
  (tests/data/framework_options/, each with the source file and commit it was read from).
"""

from __future__ import annotations

import re
import shlex

from pydantic import BaseModel, Field

from sextant.errors import SpecError


class ExportError(SpecError):
    """The configuration cannot be expressed in the requested framework; the message says why."""

    def __init__(self, framework: str, why: str, *, field: str = "format") -> None:
        super().__init__(f"{framework} cannot run this configuration: {why}", field=field)


class LaunchConfig(BaseModel):
    """A ready-to-run launch: environment, command line and the files the command reads."""

    format: str
    framework: str = Field(description="The framework and the version whose options were checked.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables the launch needs.")
    argv: list[str] = Field(description="The command, one argument per item.")
    files: dict[str, str] = Field(default_factory=dict, description="File name -> content, written beside the command.")
    notes: list[str] = Field(default_factory=list, description="What the export assumed or left to the user.")

    def command_line(self) -> str:
        """The command as a shell line: the program and its leading words, then one option (with
        its value) per line, joined by ``\\`` continuations."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        words = [_quote(a) for a in self.argv]
        head = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
        lines: list[str] = [" ".join(words[:head])] if head else []
        for word in words[head:]:
            if _OPTION.match(word) and lines:
                lines.append(word)
            elif lines and _OPTION.match(lines[-1]) and " " not in lines[-1]:
                lines[-1] += " " + word
            else:
                lines.append(word)
        body = " \\\n    ".join(lines)
        return f"{prefix} {body}" if prefix else body

    def script(self) -> str:
        """A bash script that writes the files and runs the command (notes as comments)."""
        lines = ["#!/usr/bin/env bash", f"# {self.framework} launch written by sextant (format {self.format})"]
        lines += [f"# - {note}" for note in self.notes]
        lines += ["set -euo pipefail"]
        for name in sorted({m.group(0)[2:-1] for a in self.argv for m in _ENV_REFERENCE.finditer(a)}):
            lines.append(f': "${{{name}:?set {name} on each node}}"')
        for name, content in self.files.items():
            lines += [f"cat > {shlex.quote(name)} <<'SEXTANT_EOF'", content.rstrip("\n"), "SEXTANT_EOF"]
        lines.append(self.command_line())
        return "\n".join(lines) + "\n"


#: An option word (``--tp``, ``-m``), not a value that starts with a minus (``-1``).
_OPTION = re.compile(r"--?[A-Za-z]")
_ENV_REFERENCE = re.compile(r"\$\{[A-Z_][A-Z0-9_]*\}")


#: A word of ``${VAR}`` references the shell should expand on each node, and plain characters.
_EXPANDED = re.compile(r"(?:\$\{[A-Z_][A-Z0-9_]*\}|[A-Za-z0-9_.:/=@%+-])+")


def _quote(word: str) -> str:
    """Shell-quote ``word``, except one made of ``${VAR}`` references (``${MASTER_ADDR}:5000``)
    and characters the shell leaves alone, which it should expand on each node."""
    return word if _ENV_REFERENCE.search(word) and _EXPANDED.fullmatch(word) else shlex.quote(word)


def flag(options: list[str], name: str, value: object = None, *, when: bool = True) -> None:
    """Append ``name`` (and ``value``, unless None) to ``options`` when ``when``."""
    if not when:
        return
    options.append(name)
    if value is not None:
        options.append(_text(value))


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def torchrun(gpus_per_node: int, nodes: int) -> list[str]:
    """``torchrun``'s own arguments: one node runs standalone; several read the rendezvous from
    the environment every node sets (``$NODE_RANK``, ``$MASTER_ADDR``)."""
    if nodes == 1:
        return ["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", str(gpus_per_node)]
    return ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(gpus_per_node),
            "--node-rank", "${NODE_RANK}", "--master-addr", "${MASTER_ADDR}", "--master-port", "29500"]
