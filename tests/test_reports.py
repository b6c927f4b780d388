"""What people read: the plan and validation tables stay whole in a pipe and in an 80-column
terminal (no number cut short, no column dropped), and layouts are named compactly."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from sextant.cli.app import main
from sextant.spec.strategy import layout_label
from sextant.train.result import TIME_PART_LABELS, TIME_PART_SHORT


@pytest.mark.parametrize("degrees, sp, label", [
    ((1, 1, 1), False, "1 GPU"),
    ((8, 1, 1), False, "dp8"),
    ((4, 8, 12, 1, 1, 4), True, "dp4 tp8+sp pp12 vpp4"),
    ((2, 4, 1, 2, 4), False, "dp2 tp4 cp2 ep4"),
])
def test_layout_label_names_the_degrees_above_one(degrees, sp, label):
    assert layout_label(*degrees, sequence_parallel=sp) == label


def test_every_time_part_has_a_short_name():
    assert TIME_PART_SHORT.keys() == TIME_PART_LABELS.keys()
    assert all(len(v) <= 14 for v in TIME_PART_SHORT.values())


def _plan_json(capsys, argv):
    import json

    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _tables(render) -> list:
    """The tables ``render(console)`` prints."""
    import io

    from rich.console import Console
    from rich.table import Table

    tables = []
    console = Console(file=io.StringIO(), width=200)
    console.print = lambda *objects, **_: tables.extend(o for o in objects if isinstance(o, Table))
    render(console)
    return tables


def _characters_lost(table, width: int) -> Counter:
    """Characters of ``table``'s title, headers and cells missing from its rendering at ``width``
    columns. Wrapping and folding only move characters; cutting a cell short drops them."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    texts = [table.title, *(c.header for c in table.columns), *(cell for c in table.columns for cell in c._cells)]
    wanted = Counter(ch for text in texts for ch in str(text) if not ch.isspace())
    printed = Counter(ch for ch in console.file.getvalue() if not ch.isspace() and ch != "─")
    return wanted - printed


PLAN_70B_ON_ONE_4090 = ["plan", "train", "--model", "llama-3.1-70b", "--gpu", "rtx-4090", "--gpus", "1",
                        "--global-batch", "8", "--seq-len", "2048", "--top", "3"]


@pytest.mark.parametrize("width", [60, 80])
def test_narrow_terminals_wrap_cells_rather_than_cut_them(width):
    """Plans with several GPU counts and offloading (the widest tables) and a multi-GPU serving
    plan: at 60 or 80 columns every character of every table is still printed."""
    from sextant.cli.plan_cmds import render_plan
    from sextant.cli.plan_serve_cmds import render_plan_serve
    from sextant.plan.search import plan_train
    from sextant.plan.serve_search import plan_serve
    from sextant.spec.scenario import parse_scenario
    from sextant.spec.serving import parse_serve_scenario

    train = plan_train(parse_scenario({"model": "llama-3.1-70b", "hardware": {"gpu": "rtx-4090", "gpus": 1},
                                       "workload": {"global_batch": 8, "seq_len": 2048}}, source="test"),
                       [1, 2], top_k=3)
    serve = plan_serve(parse_serve_scenario({
        "model": "llama-2-13b", "deployment": {"precision": "fp16"}, "hardware": {"gpu": "a10g", "gpus": 6,
                                                                                  "node": "aws-g5"},
        "workload": {"input_len": 128, "output_len": 8, "num_requests": 16}}), top=2)
    tables = _tables(lambda c: render_plan(train, c)) + _tables(lambda c: render_plan_serve(serve, 5, c))
    assert len(tables) == 5  # rejected, top, offload strategies, by GPU count; the serving placements
    for table in tables:
        assert not _characters_lost(table, width), table.title


@pytest.mark.parametrize("argv, headers", [
    (["plan", "train", "--top", "3"], ("layout", "ZeRO", "recompute", "tokens/s", "MFU", "largest part",
                                       "offloaded", "bound by")),
    (PLAN_70B_ON_ONE_4090, ("layout", "offload", "tokens/s", "largest part", "NVMe")),
])
def test_a_piped_plan_keeps_each_configuration_on_one_line(capsys, monkeypatch, argv, headers):
    """In a pipe (no COLUMNS) reports are 120 columns wide: headers whole, the best layout and its
    throughput printed whole on its row."""
    monkeypatch.delenv("COLUMNS", raising=False)
    best = _plan_json(capsys, argv)["best"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120
    for header in headers:
        assert header in out, header
    layout = re.escape(layout_label(best["dp"], best["tp"], best["pp"], best["cp"], best["ep"], best["vpp"],
                                    sequence_parallel=best["sequence_parallel"]))
    tokens = re.escape(f"{best['tokens_per_s']:,.0f}")
    assert re.search(rf"^1\s+{layout}\s.*\s{tokens}\s", out, re.M), out


def test_plan_serve_lists_as_many_placements_as_asked(capsys):
    argv = ["plan", "serve", "--model", "opt-30b", "--gpu", "t4", "--node", "gcp-n1-highmem-32-t4",
            "--precision", "fp16", "--input-len", "512", "--output-len", "32", "--num-requests", "64"]
    plan = _plan_json(capsys, argv)
    for top in (2, 4):
        assert main([*argv, "--top", str(top)]) == 0
        out = capsys.readouterr().out
        rows = [line for line in out.splitlines() if re.search(r"\d\.\d\d  ", line) and "best:" not in line]
        assert len(rows) == top, out
        assert f"{len(plan['strategies']) - top} slower placements not shown" in out
