"""Dump a framework's own command-line parser into an option table the export tests check against.

Megatron-LM's training arguments (``megatron/training/arguments.py``) are not part of any
package that installs from the package index (``megatron-core`` ships ``megatron/core`` only),
so CI cannot import its parser. This script builds the real parser from a Megatron-LM checkout
and writes what each option accepts (a value of which type and choices, or none) to
``tests/data/framework_options/megatron-lm.json``; ``tests/framework_options.py`` turns the table
back into an argparse parser.

    # Megatron-LM's parser needs Python >= 3.12, torch, numpy and packaging:
    python3.12 -m venv /tmp/mlmvenv && /tmp/mlmvenv/bin/pip install torch==2.13.0 numpy packaging
    git clone https://github.com/NVIDIA/Megatron-LM /tmp/Megatron-LM
    PYTHONPATH=/tmp/Megatron-LM /tmp/mlmvenv/bin/python scripts/dump_framework_options.py \\
        --megatron /tmp/Megatron-LM --commit "$(git -C /tmp/Megatron-LM rev-parse HEAD)"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "framework_options" / "megatron-lm.json"


def _entry(action: argparse.Action) -> dict:
    if action.nargs == 0:  # store_true / store_false / store_const / count
        return {"takes": "flag"}
    entry: dict = {"takes": "value", "type": getattr(action.type, "__name__", "str") if action.type else "str"}
    if action.choices is not None:
        # Enum choices (``--attention-backend``) are typed on the command line by their names.
        entry["choices"] = [c if isinstance(c, (int, float, str)) else getattr(c, "name", str(c))
                            for c in action.choices]
    if action.nargs not in (None, 1):
        entry["nargs"] = action.nargs
    return entry


def dump_megatron(source: Path, commit: str) -> dict:
    sys.path.insert(0, str(source))
    from megatron.training.arguments import add_megatron_arguments

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    options = {}
    for action in parser._actions:
        for name in action.option_strings:
            if name.startswith("--"):
                options[name] = _entry(action)
    return {
        "framework": "Megatron-LM",
        "command": "torchrun ... pretrain_gpt.py [options]",
        "version": f"main at {commit}",
        "sources": [f"https://github.com/NVIDIA/Megatron-LM/blob/{commit}/megatron/training/arguments.py"],
        "dumped_by": "scripts/dump_framework_options.py (add_megatron_arguments on an argparse parser)",
        "options": dict(sorted(options.items())),
    }


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--megatron", type=Path, required=True, help="Megatron-LM checkout")
    cli.add_argument("--commit", required=True, help="the checkout's commit, recorded as provenance")
    args = cli.parse_args()
    table = dump_megatron(args.megatron, args.commit)
    OUT.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"{len(table['options'])} options -> {OUT}")


if __name__ == "__main__":
    main()
