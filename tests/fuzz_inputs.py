"""Hypothesis strategies for bad and edge inputs to every command, and the contract each run of
the CLI must keep (issue 26): exit 2 with one line naming the field (one JSON object under
``--json``), or exit 0 with finite, strict output; never a traceback, never past ``TIME_LIMIT_S``.

The strategies draw the options of each command from the CLI itself (its click parameters), so a
flag added later is fuzzed without touching this file.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import re
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import typer
import yaml
from hypothesis import strategies as st

from sextant.cli.app import app, main

#: No input may take more than this (seconds of this process's CPU time, so that the load of
#: other processes cannot fail a test; a hang is a loop, and a loop burns CPU) before it answers.
TIME_LIMIT_S = 10.0

INTS = [-(2**63), -1, 0, 1, 2, 3, 7, 8, 64, 1000, 2**31, 2**63, 10**30]
FLOATS = ["nan", "-nan", "inf", "-inf", "1e-320", "1e308", "-1", "0", "-0.0", "0.5", "1", "2.5", "1e9", "1e-9"]
STRINGS = ["", " ", "x", "llama-3.1-8b", "h100-sxm", "none", "cpu", "nvme", "8", "-1", "nan", "é\u0301", "a" * 300,
           "../../etc/passwd", "1-1048576", "8,16", "0,8", "1e3", "1.5", "--json", "megatron", "vllm"]
#: Values of a YAML scenario, config.json or ledger key.
VALUES = [None, True, False, -1, 0, 1, 3, 2**31, 2**70, -(2**70), 0.5, 1e308, -1e-300, float("nan"), float("inf"),
          "x", "", "8", "1e3", [], [1, 2], {}, {"a": 1}, "llama-3.1-8b", "h100-sxm"]


@dataclass(frozen=True)
class Option:
    flag: str
    kind: str  # int, float, str, path, out, bool, or choice
    choices: tuple[str, ...] = ()


def _options(group: str, name: str) -> list[Option]:
    command = typer.main.get_command(app).commands[group].commands[name]
    found = []
    for p in command.params:
        flag = next((o for o in p.opts if o.startswith("--")), None)
        if flag is None or flag in ("--json", "--help"):
            continue
        annotation = p.type_descriptor.annotation
        if p.is_flag:
            found.append(Option(flag, "bool"))
            found.extend(Option(o, "bool") for o in p.secondary_opts)
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            found.append(Option(flag, "choice", tuple(str(m.value) for m in annotation)))
        elif annotation is Path:
            found.append(Option(flag, "out" if flag.endswith("-out") or flag == "--out" else "path"))
        else:
            found.append(Option(flag, {int: "int", float: "float"}.get(annotation, "str")))
    return found


def option_values(option: Option, files: dict[str, str]) -> st.SearchStrategy[list[str]]:
    """The argv words one option contributes: the flag, and a value drawn for its kind."""
    if option.kind == "bool":
        return st.just([option.flag])
    pools = {
        "int": [str(v) for v in INTS] + FLOATS[:4],
        "float": FLOATS + [str(v) for v in INTS[:4]],
        "str": STRINGS,
        "choice": list(option.choices) + ["", "bogus"],
        "path": [v for k, v in files.items() if not k.startswith("out:")],
        "out": [v for k, v in files.items() if k.startswith("out:")],
    }
    return st.sampled_from(pools[option.kind]).map(lambda value: [option.flag, value])


def argv_for(group: str, name: str, base: list[str], files: dict[str, str], *, exclude=(), at_most: int = 3):
    """``[group, name, *base, *fuzzed options]``, with one to ``at_most`` options and maybe --json."""
    options = [o for o in _options(group, name) if o.flag not in exclude]

    @st.composite
    def build(draw):
        chosen = draw(st.lists(st.sampled_from(options), min_size=1, max_size=at_most, unique_by=lambda o: o.flag))
        words = [w for o in chosen for w in draw(option_values(o, files))]
        return [group, name, *base, *words, *(["--json"] if draw(st.booleans()) else [])]

    return build()


def yaml_tree(base: dict, sections: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """A scenario YAML: ``base`` with one to three keys (known or not) set to odd values."""

    @st.composite
    def build(draw):
        tree = json.loads(json.dumps(base))
        for _ in range(draw(st.integers(1, 3))):
            section = draw(st.sampled_from(sorted(sections)))
            key = draw(st.sampled_from(sections[section] + ["bogus_key"]))
            value = draw(st.sampled_from(VALUES))
            if section == "":
                tree[key] = value
            elif isinstance(tree.get(section), dict) or section not in tree:
                tree.setdefault(section, {})[key] = value
        return yaml.safe_dump(tree)

    return build()


def json_config(base: dict) -> st.SearchStrategy[str]:
    """A config.json: ``base`` with one to three keys changed, removed or added."""
    keys = sorted(base) + ["num_local_experts", "n_routed_experts", "num_experts_per_tok", "rope_scaling",
                           "sliding_window", "head_dim", "moe_intermediate_size"]

    @st.composite
    def build(draw):
        config = dict(base)
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(keys))
            if draw(st.integers(0, 4)) == 0:
                config.pop(key, None)
            else:
                config[key] = draw(st.sampled_from(VALUES))
        return json.dumps(config, allow_nan=True)

    return build()


def trace_text() -> st.SearchStrategy[str]:
    """A CSV or JSONL trace of up to 12 rows with odd values."""
    cell = st.sampled_from(["0", "1", "0.5", "-1", "nan", "inf", "1e400", "2", "100", "", "x", "1e9", "16777217"])
    row = st.tuples(cell, cell, cell)

    @st.composite
    def build(draw):
        rows = draw(st.lists(row, max_size=12))
        header = draw(st.sampled_from(["arrival_s,input_tokens,output_tokens", "timestamp,prompt_len,output_len",
                                       "a,b,c", ""]))
        return "\n".join([header, *(",".join(r) for r in rows)]) + "\n"

    return build()


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer within {TIME_LIMIT_S:g} s of CPU")


_NON_FINITE = re.compile(r"(?<![A-Za-z_])(nan|inf|infinity)(?![A-Za-z_])", re.IGNORECASE)


#: Inputs run so far in this process, so each test can check it ran as many as it asked for.
RUNS = {"inputs": 0}


def run_and_check(argv: list[str]) -> int:
    """Run the CLI in-process on ``argv`` and assert the contract; returns the exit code."""
    RUNS["inputs"] += 1
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, TIME_LIMIT_S)
    try:  # an overflow or invalid operation in numpy is a wrong number on its way to the output
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            rc = main(argv)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
    stdout, stderr = out.getvalue(), err.getvalue()
    as_json = "--json" in argv
    assert rc in (0, 2), f"exit {rc} for {argv}\n{stderr[-2000:]}"
    if rc == 2:
        if as_json:
            error = json.loads(stdout)["error"]
            assert isinstance(error["message"], str) and error["message"], (argv, stdout)
        else:
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), (argv, stderr)
        return rc
    if as_json:
        json.loads(stdout, parse_constant=lambda token: (_ for _ in ()).throw(ValueError(f"{token} in JSON")))
    else:
        match = _NON_FINITE.search(stdout)
        assert match is None, f"non-finite {match.group(0)!r} in the output of {argv}:\n{stdout[-2000:]}"
    return rc
