"""Fitting calibration records (NumPy only) and using a measured GEMM table in the cost model."""

import numpy as np
import pytest

from sextant.calibrate.fit import fit_affine, fit_gemm_curve, gemm_table
from sextant.cost.compute import gemm_efficiency, gemm_time
from sextant.spec.profile import EfficiencyTable, HardwareProfile

PEAK = 100e12


def synthetic_records(e_max: float, half: float, dims=(64, 256, 1024, 4096)) -> list[dict]:
    records = []
    for m in dims:
        for n in dims:
            for k in dims:
                eff = e_max * (m / (m + half)) * (n / (n + half)) * (k / (k + half))
                records.append({"m": m, "n": n, "k": k, "seconds": 2.0 * m * n * k / (eff * PEAK)})
    return records


def test_gemm_curve_fit_recovers_the_generating_parameters():
    fit = fit_gemm_curve(synthetic_records(0.8, 100.0), PEAK)
    assert fit["gemm_max_efficiency"] == pytest.approx(0.8, rel=1e-6)
    assert fit["gemm_half_dim"] == pytest.approx(100.0, rel=1e-5)
    assert fit["r_squared"] > 0.999999
    assert fit["gemm_half_dim_stderr"] < 1e-3  # an exact curve leaves no uncertainty


def test_gemm_curve_fit_reports_an_uncertainty_that_covers_the_truth_under_noise():
    rng = np.random.default_rng(7)
    records = synthetic_records(0.75, 300.0, dims=(32, 64, 128, 256, 512, 1024, 4096))
    for r in records:  # 5% timing noise, as a shared GPU gives
        r["seconds"] *= float(np.exp(rng.normal(0.0, 0.05)))
    fit = fit_gemm_curve(records, PEAK)
    assert 0 < fit["gemm_half_dim_stderr"] < 0.2 * fit["gemm_half_dim"]
    assert abs(fit["gemm_half_dim"] - 300.0) < 3 * fit["gemm_half_dim_stderr"]
    assert abs(fit["gemm_max_efficiency"] - 0.75) < 3 * fit["gemm_max_efficiency_stderr"]


def test_gemm_curve_fit_holds_the_half_size_at_its_bound_for_saturated_kernels():
    fit = fit_gemm_curve(synthetic_records(0.9, 0.0), PEAK)
    assert fit["gemm_half_dim"] < 0.01  # a fraction of one row: no under-filling
    assert fit["gemm_max_efficiency"] == pytest.approx(0.9, rel=1e-4)


def test_gemm_table_reproduces_measured_points_and_interpolates_between_them():
    records = synthetic_records(0.8, 100.0)
    table = gemm_table(records, PEAK)
    for r in records[::7]:
        measured = 2.0 * r["m"] * r["n"] * r["k"] / r["seconds"] / PEAK
        assert float(table.interpolate(r["m"], r["n"], r["k"])) == pytest.approx(measured)
    # Between grid points the value lies between its neighbours; outside, the edge holds.
    mid = float(table.interpolate(128, 4096, 4096))
    lo, hi = float(table.interpolate(64, 4096, 4096)), float(table.interpolate(256, 4096, 4096))
    assert lo < mid < hi
    assert float(table.interpolate(10**6, 4096, 4096)) == pytest.approx(float(table.interpolate(4096, 4096, 4096)))


def test_incomplete_grid_is_an_error():
    records = synthetic_records(0.8, 100.0)[:-1]
    with pytest.raises(ValueError, match="incomplete"):
        gemm_table(records, PEAK)


def test_table_is_validated():
    with pytest.raises(ValueError):
        EfficiencyTable(dims=["m", "n", "k"], axes=[[64, 32], [1], [1]], efficiency=[0.5, 0.5])
    with pytest.raises(ValueError):
        EfficiencyTable(dims=["m", "n", "k"], axes=[[64], [1], [1]], efficiency=[0.5, 0.5])
    with pytest.raises(ValueError):
        EfficiencyTable(dims=["m", "n"], axes=[[64]], efficiency=[0.5])


def test_cost_model_uses_the_table_when_given():
    profile = HardwareProfile(name="p", gpu="g", provenance="test", gemm_max_efficiency=0.9, gemm_half_dim=0.0,
                              flash_attention_efficiency=0.5, unfused_attention_gemm_efficiency=0.5,
                              memory_bw_efficiency=0.8, kernel_overhead_s=0.0, intra_node_bw_efficiency=0.8,
                              network_bw_efficiency=0.9)
    table = EfficiencyTable(dims=["m", "n", "k"], axes=[[1024], [1024], [1024]], efficiency=[0.3])
    assert float(gemm_efficiency(1024, 1024, 1024, profile)) == pytest.approx(0.9)
    assert float(gemm_efficiency(1024, 1024, 1024, profile, table)) == pytest.approx(0.3)
    t_curve = gemm_time(1024, 1024, 1024, peak_flops=PEAK, mem_bw=1e15, bytes_per_element=2, profile=profile)
    t_table = gemm_time(1024, 1024, 1024, peak_flops=PEAK, mem_bw=1e15, bytes_per_element=2, profile=profile,
                        table=table)
    assert float(t_table) == pytest.approx(float(t_curve) * 3)


def test_affine_fit_recovers_latency_and_bandwidth():
    sizes = np.array([1e3, 1e5, 1e7, 1e8])
    alpha, beta, r2 = fit_affine(sizes, 5e-6 + sizes / 2e10)
    assert alpha == pytest.approx(5e-6, rel=1e-3)
    assert beta == pytest.approx(2e10, rel=1e-6)
    assert r2 == pytest.approx(1.0)


def test_framework_scaling_applies_to_measured_tables_too():
    profile = HardwareProfile(name="p", gpu="g", provenance="test", gemm_max_efficiency=0.9, gemm_half_dim=0.0,
                              flash_attention_efficiency=0.5, unfused_attention_gemm_efficiency=0.5,
                              memory_bw_efficiency=0.8, kernel_overhead_s=0.0, intra_node_bw_efficiency=0.8,
                              network_bw_efficiency=0.9, loss_bw_efficiency=0.4,
                              gemm_tables={"bf16": EfficiencyTable(dims=["m", "n", "k"], axes=[[64], [64], [64]],
                                                                   efficiency=[0.6])})
    half = profile.scaled(0.5, "slow framework")
    assert float(half.gemm_tables["bf16"].interpolate(64, 64, 64)) == pytest.approx(0.3)
    assert half.loss_bw_efficiency == pytest.approx(0.2)
    assert half.gemm_max_efficiency == pytest.approx(0.45)
