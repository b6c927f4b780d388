"""What people read: the plan and validation tables stay whole in a pipe and in an 80-column
terminal (no number cut short, no column dropped), and layouts are named compactly."""

from __future__ import annotations

import re

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


PLAN_70B_ON_ONE_4090 = ["plan", "train", "--model", "llama-3.1-70b", "--gpu", "rtx-4090", "--gpus", "1",
                        "--global-batch", "8", "--seq-len", "2048", "--top", "3"]


@pytest.mark.parametrize("columns", [None, "80"])
def test_plan_train_report_keeps_every_column_and_number(capsys, monkeypatch, columns):
    """The default plan (no offloading) and a single-GPU offload plan: every header is printed,
    the best configuration's throughput appears whole, and no line is wider than the console."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)  # a pipe: the report's own width
    else:
        monkeypatch.setenv("COLUMNS", columns)
    for argv, headers in ((["plan", "train", "--top", "3"], ("layout", "ZeRO", "recompute", "tokens/s", "MFU",
                                                             "largest", "offloaded", "bound by")),
                          (PLAN_70B_ON_ONE_4090, ("layout", "offload", "tokens/s", "largest", "NVMe"))):
        best = _plan_json(capsys, argv)["best"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        width = int(columns or 120)
        assert max(len(line) for line in out.splitlines()) <= width
        for header in headers:
            assert header in out, header
        assert f"{best['tokens_per_s']:,.0f}" in out
        if columns is None:
            # In a pipe the configuration stays on one line: the best layout is printed whole.
            layout = re.escape(layout_label(best["dp"], best["tp"], best["pp"], best["cp"], best["ep"], best["vpp"],
                                            sequence_parallel=best["sequence_parallel"]))
            assert re.search(rf"^1\s+{layout}\s", out, re.M), out


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
