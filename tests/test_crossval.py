"""Fitting and leave-one-source-out cross-validation: the fitter reproduces the catalog's fitted
values, a fold refits exactly the entries its source fed, and the held-out headline gates the build."""

from __future__ import annotations

import numpy as np
import pytest

from sextant.validate.crossval import cross_validate, validate_training_cv
from sextant.validate.fitting import (
    catalog_values,
    fit,
    load_fits,
    nelder_mead,
    predicted,
    row_observation,
    with_values,
)
from sextant.validate.ledger import load_ledger, load_training_ledgers

#: Held out by source, the established ledger (58 rows, 9 sources) today: median 6.7%, p90 15.2%.
HELD_OUT_MEDIAN_TARGET = 0.08
HELD_OUT_P90_TARGET = 0.20
#: Every built-in row (established and 2024-2026, 164 rows): median 9.5%, p90 39.7% today. These
#: only stop the figures from getting worse; issue 23's targets (median 8%, p90 15%, no row above
#: 35%) are what the missing mechanisms (execution mode, grouped-GEMM MoE, fitted Blackwell and
#: MI300X profiles) are for.
ALL_ROWS_MEDIAN_CEILING = 0.10
ALL_ROWS_P90_CEILING = 0.50


@pytest.fixture(scope="module")
def ledger():
    return {r.id: r for r in load_ledger()}


@pytest.fixture(scope="module")
def report(ledger):
    return cross_validate(ledger.values())


@pytest.fixture(scope="module")
def everything():
    # The same cross-validation `validate train` runs (computed once per process).
    return validate_training_cv(None).cross_validation


@pytest.mark.slow
def test_every_built_in_row_is_predicted_held_out(everything):
    h = everything.held_out
    assert h.rows >= 150 and len(everything.sources) >= 18
    assert h.median <= ALL_ROWS_MEDIAN_CEILING, f"held-out median {h.median:.1%}"
    assert h.p90 <= ALL_ROWS_P90_CEILING, f"held-out p90 {h.p90:.1%}"
    regimes = {(g.regime, g.value): g.held_out.rows for g in everything.regimes}
    assert regimes[("precision", "fp8")] >= 40 and regimes[("model", "MoE")] >= 8
    assert regimes[("gpu generation", "blackwell")] >= 10


def test_nelder_mead_finds_a_bowls_minimum():
    found = nelder_mead(lambda x: float((x[0] - 0.3) ** 2 + 4 * (x[1] - 0.7) ** 2), np.array([0.5, 0.5]),
                        max_evals=300, xtol=1e-6, ftol=1e-12)
    assert found == pytest.approx([0.3, 0.7], abs=1e-3)


def test_catalog_values_reproduce_the_catalog_prediction(ledger):
    fits = {e.name: e for e in load_fits()}
    for entry_name, row_id in (("a100", "K4"), ("h100", "H3"), ("deepspeed-megatron-2022", "N1"),
                               ("deepspeed-zero3-2021", "Z2")):
        obs = row_observation(ledger[row_id])
        values = catalog_values(fits[entry_name], obs)
        assert predicted(obs, values) == pytest.approx(predicted(obs, {}), rel=1e-9)
        assert with_values(obs.ctx, {}) is obs.ctx


@pytest.mark.slow
def test_the_fitter_finds_the_catalogs_values_from_the_priors():
    """The H100 entry's three parameters (GEMM curve height and half-dimension, FP8 factor) are
    correlated: from the priors, the restarted simplex still lands on the catalog's values."""
    ledger = {r.id: r for r in load_training_ledgers()}
    h100 = {e.name: e for e in load_fits()}["h100"]
    data = [row_observation(ledger[i]) for i in h100.rows]
    values = fit(h100, data)
    catalog = catalog_values(h100, data[0])
    assert set(values) == set(catalog) == {"gemm_max_efficiency", "gemm_half_dim", "training_gemm_dtype_efficiency.fp8"}
    for name, value in catalog.items():
        assert values[name] == pytest.approx(value, rel=0.02), name
    assert fit(h100, []) == h100.priors


@pytest.mark.slow
def test_each_fold_refits_what_its_source_fed(report):
    by_id = {r.id: r for r in report.rows}
    # SC21's two tables are one source: their fold refits the A100 profile and, with no ZeRO-3
    # row left, puts the DeepSpeed ZeRO-3 preset back at its prior.
    assert by_id["Z3"].source == by_id["M3"].source == "M"
    assert by_id["Z3"].refitted["deepspeed-zero3-2021"] == {"overlap_efficiency": 1.0}
    assert set(by_id["M3"].refitted) == {"a100"}
    # Only the H100 profile was fitted on the Megatron-LM README's rows: its fold refits that
    # entry on the other sources' H100 rows (NVIDIA's tables, MLPerf), not back to the priors.
    assert set(by_id["H1"].refitted) == {"h100"}
    assert by_id["H1"].refitted["h100"] != {e.name: e for e in load_fits()}["h100"].priors
    # Rows no entry was fitted on are out of sample already.
    assert by_id["L1"].refitted == {} and by_id["L1"].held_out == by_id["L1"].in_sample
    # The BLOOM row's fold drops the BLOOM team's sweeps with it.
    assert by_id["B1"].source == "B" and by_id["B2"].source == "G"


def test_held_out_headline_gates_the_build(report):
    h = report.held_out
    assert h.rows >= 58 and len(report.sources) >= 9
    assert h.median <= HELD_OUT_MEDIAN_TARGET, f"held-out median {h.median:.1%}"
    assert h.p90 <= HELD_OUT_P90_TARGET, f"held-out p90 {h.p90:.1%}"
    assert report.in_sample.median <= h.median
    regimes = {(g.regime, g.value) for g in report.regimes}
    assert {("gpu generation", "ampere"), ("gpu generation", "hopper"), ("framework", "megatron")} <= regimes
    assert sum(g.held_out.rows for g in report.regimes if g.regime == "precision") == h.rows


def test_pairs_measured_on_one_setup_are_predicted_in_their_order():
    """BF16 against FP8, two accumulation depths, two GPUs: the one that ran faster is predicted
    faster. With the FP8 recipe costed, most H100 precision pairs' speed-ups fall within 10%."""
    from sextant.validate.train import validate_training

    pairs = validate_training(builtins=("training-modern.yaml",)).pairs
    assert len(pairs) >= 18
    assert all(p.agrees for p in pairs), [(p.first, p.second) for p in pairs if not p.agrees]
    h100_precision = [p for p in pairs if p.first.startswith(("NE", "PD")) and p.first != "NE27"]
    assert sum(abs(p.ratio_error) <= 0.10 for p in h100_precision) >= len(h100_precision) - 1


def test_intervals_cover_what_they_claim_held_out_by_source(everything):
    """80% intervals cover 75-85% of the rows when each source's intervals come only from the
    other sources' residuals."""
    cov = everything.interval_coverage
    assert cov.rows >= 150 and 0.75 <= cov.fraction <= 0.85, cov


def test_the_shipped_interval_table_is_the_ledgers(everything):
    """catalog/data/intervals.yaml is what scripts/fit_intervals.py writes from today's ledger and
    model: a change to either that moves the residuals must regenerate it."""
    from sextant.catalog.intervals import interval_table
    from sextant.validate.intervals import LEVEL, interval_pools

    shipped = interval_table()
    assert shipped["level"] == LEVEL
    fresh = interval_pools(everything.rows, LEVEL)
    assert set(shipped["pools"]) == set(fresh)
    for pool, band in fresh.items():
        entry = shipped["pools"][pool]
        assert entry["rows"] == band.rows, f"{pool}: run scripts/fit_intervals.py"
        assert entry["low"] == pytest.approx(band.low, abs=1e-4) and entry["high"] == pytest.approx(band.high, abs=1e-4)


def test_the_default_scenario_agrees_with_published_runs_of_its_setup_within_its_interval(ledger):
    """Llama 3.1 8B on 8 H100 in BF16: NVIDIA's NeMo run (NE1: 85,459 tokens/s on 8 GPUs) and the
    torchtitan runs the issue cites (about 6,000-6,700 tokens/s per GPU) lie within the interval
    the default prediction prints."""
    from sextant.spec.scenario import default_train_scenario_path, load_scenario
    from sextant.train.predict import predict_train

    result = predict_train(load_scenario(default_train_scenario_path()))
    band = result.interval["tokens_per_s_per_gpu"]
    assert band["level"] == 0.8 and band["low"] < result.tokens_per_s_per_gpu < band["high"]
    nemo = 85459 / 8
    assert band["low"] <= nemo <= band["high"]
    assert band["low"] <= 6000 and 6700 <= band["high"]
    step = result.interval["step_time_s"]
    assert step["low"] == pytest.approx(result.step_time_s * result.tokens_per_s_per_gpu / band["high"], rel=1e-9)


def test_cross_validation_reports_its_progress_fold_by_fold(ledger):
    calls = []
    report = cross_validate([ledger[i] for i in ("L1", "L2", "V1")], progress=lambda done, total: calls.append((done, total)))
    assert report.sources == ["L", "V"]
    assert calls == [(0, 2), (1, 2)]
