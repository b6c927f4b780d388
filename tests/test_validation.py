"""The validation ledger gates the build: accuracy targets, coverage, and memory feasibility."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from sextant.spec.scenario import TrainScenario
from sextant.train.predict import predict_train
from sextant.validate.ledger import load_ledger
from sextant.validate.train import validate_training

MEDIAN_APE_TARGET = 0.08
MAX_APE_TARGET = 0.25


@pytest.fixture(scope="module")
def report():
    """The established ledger (training.yaml): the rows the profiles were fitted on. The 2024-2026
    rows (training-modern.yaml) are gated by tests/test_crossval.py."""
    return validate_training(builtins=("training.yaml",))


def test_ledger_accuracy_targets(report) -> None:
    assert report.median_ape <= MEDIAN_APE_TARGET, f"median APE {report.median_ape:.1%} above target"
    worst = sorted(report.rows, key=lambda r: r.ape, reverse=True)[:3]
    assert report.max_ape <= MAX_APE_TARGET, f"worst rows: {[(r.id, round(r.ape, 3)) for r in worst]}"


def test_published_runs_fit_in_memory(report) -> None:
    assert [r.id for r in report.rows if not r.fits] == []


def test_ledger_coverage() -> None:
    rows = load_ledger()
    assert len(rows) >= 35
    assert any(r.strategy.get("zero") == 3 for r in rows), "needs ZeRO-3 rows"
    assert any(r.strategy.get("dp", 1) > 1 for r in rows), "needs data-parallel rows"
    assert {r.gpu for r in rows} >= {"a100-80gb", "h100-sxm"}
    for row in rows:
        assert row.source.strip(), f"{row.id} has no citation"


def test_excluded_rows_load_and_say_why() -> None:
    text = resources.files("sextant.validate").joinpath("data", "training-excluded.yaml")
    rows = load_ledger(str(text))
    assert rows and all("EXCLUDED" in r.notes for r in rows)
    assert not {r.id for r in rows} & {r.id for r in load_ledger()}


def test_json_shape(report) -> None:
    data = report.model_dump()
    assert {"rows", "median_ape", "max_ape"} <= data.keys()
    assert {"id", "predicted", "published", "ape"} <= data["rows"][0].keys()


def test_gpt3_175b_without_zero_on_one_node_does_not_fit() -> None:
    """175B parameters x 16 bytes of mixed-precision Adam state is 2.8 TB: eight 80 GiB GPUs
    cannot hold it without sharding the optimizer state."""
    result = predict_train(TrainScenario.model_validate({
        "model": "gpt3-175b",
        "hardware": {"gpu": "a100-80gb", "gpus": 8},
        "strategy": {"tp": 8, "pp": 1, "zero": 0, "micro_batch": 1, "recompute": "full", "precision": "fp16"},
        "workload": {"global_batch": 8, "seq_len": 2048, "optimizer": "adam"},
    }))
    assert not result.fits
    shortfall = result.memory_gb_per_gpu["total"] - result.memory_capacity_gb
    # 175e9 * 16 bytes / 8 GPUs = 350 GB of model states alone per GPU
    assert shortfall > 200
    assert result.memory_headroom_gb == pytest.approx(-shortfall)


def test_zero3_makes_a_large_model_fit() -> None:
    base = {
        "model": "llama-3.1-70b",
        "hardware": {"gpu": "h100-sxm", "gpus": 64},
        "workload": {"global_batch": 64, "seq_len": 4096},
    }
    no_shard = predict_train(TrainScenario.model_validate(
        {**base, "strategy": {"tp": 1, "zero": 0, "recompute": "full"}}))
    sharded = predict_train(TrainScenario.model_validate(
        {**base, "strategy": {"tp": 1, "zero": 3, "recompute": "full"}}))
    assert not no_shard.fits and sharded.fits


@pytest.mark.slow
def test_validate_all_runs_every_ledger_and_prints_one_line_each(capsys):
    from rich.console import Console

    from sextant.cli.validate_cmds import collect_reports, summary_table

    reports = collect_reports()  # every ledger once; the table and the JSON both render it
    console = Console(width=400, record=True)
    console.print(summary_table(reports))
    text = console.export_text()
    for ledger in ("train (held out by source)", "serve", "serve latency: itl", "plan (rediscovery)",
                   "sweep (ordering)", "memory (peak per GPU)", "memory (KV-cache capacity)"):
        assert ledger in text
    out = json.loads(json.dumps({k: r.model_dump() for k, r in reports.items()}))
    assert set(out) == {"train", "offload (training)", "serve", "serve latency", "offload (serving)", "plan", "sweep",
                        "memory", "kv_capacity"}
    assert out["serve latency"]["rows"] >= 70 and out["serve latency"]["keep_up_agreement"] >= 100
    assert out["memory"]["shipped"]["rows"] >= 70 and len(out["kv_capacity"]["rows"]) >= 10
    assert out["sweep"]["points"] >= 40
    assert len(out["train"]["rows"]) >= 150 and len(out["plan"]["rows"]) >= 58
    assert out["train"]["cross_validation"]["held_out"]["rows"] == len(out["train"]["rows"])
    assert {r["id"] for r in out["offload (serving)"]["rows"]} >= {"ZI1", "DI1"}
    assert all(0 <= out[k]["median_ape"] <= out[k]["max_ape"] for k in ("train", "serve", "offload (training)"))
