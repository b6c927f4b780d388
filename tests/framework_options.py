"""Check exported command lines against a framework's option table (tests/data/framework_options).

A table lists what each option of the framework's parser accepts: ``{"takes": "flag"}`` (with its
``negation``, if any) or ``{"takes": "value", "type": ..., "choices": [...], "nargs": ...}``, and
its other spellings (``aliases``, or an entry ``alias_of`` the option). :func:`parser_of` turns it
back into an argparse parser that rejects an unknown option, a value of the wrong type or outside
the choices, and a flag given a value, as the framework's own parser would.
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

TABLES = Path(__file__).parent / "data" / "framework_options"
_TYPES = {"int": int, "float": float}


class OptionError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits by default
        raise OptionError(message)


@cache
def table(name: str) -> dict:
    return json.loads((TABLES / f"{name}.json").read_text(encoding="utf-8"))


@cache
def parser_of(name: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=name, allow_abbrev=False, add_help=False)
    for option, spec in table(name)["options"].items():
        if "alias_of" in spec:  # the option's other spelling, declared with it
            continue
        names = [option, *spec.get("aliases", [])]
        aliases = [a for a, other in table(name)["options"].items() if other.get("alias_of") == option]
        if spec["takes"] == "flag":
            parser.add_argument(*names, *aliases, action="store_const", const=True, dest=option)
            negations = [n for n in [spec.get("negation"), *spec.get("also_accepted_negations", [])] if n]
            if negations:
                parser.add_argument(*negations, action="store_const", const=False, dest=option)
            continue
        kwargs = {"dest": option, "type": _TYPES.get(spec.get("type", "str"), str)}
        if spec.get("choices"):
            kwargs["choices"] = [kwargs["type"](c) for c in spec["choices"]]
        if spec.get("nargs") not in (None, 1):
            kwargs["nargs"] = spec["nargs"]
        parser.add_argument(*names, *aliases, **kwargs)
    return parser


def parse(name: str, args: list[str]) -> dict:
    """The options ``args`` sets, by option name (a negated flag as False); raises
    :class:`OptionError` as the parser would."""
    namespace = parser_of(name).parse_args(args)
    return {k: v for k, v in vars(namespace).items() if v is not None}
