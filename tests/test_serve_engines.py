"""Serving as today's engines serve: load stages, closed loops, shared prompts and prefix caching,
CUDA graphs, async scheduling, MoE as one grouped GEMM, and the serving-latency ledger."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from serve_strategies import scenario_over

from sextant.catalog.hardware import get_profile
from sextant.cost.inference import token_time
from sextant.errors import SpecError
from sextant.serve.deploy import deploy_scenario
from sextant.serve.iteration import cuda_graph_sizes, graph_padding
from sextant.serve.predict import predict_serve, run
from sextant.serve.requests import synthetic
from sextant.spec.serving import ServeScenario, ServeWorkload
from sextant.validate.serve_latency import compare_row, load_fit_record, load_latency_ledger


def scenario(**kw) -> ServeScenario:
    return scenario_over({"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 1},
                          "scheduler": {"batching": "chunked", "max_batch": 64, "token_budget": 2048},
                          "workload": {"input_len": 512, "output_len": 64}}, **kw)


def test_stages_send_rate_times_duration_each_evenly_spaced():
    w = ServeWorkload(arrival="constant", stages=[{"rate": 4, "duration_s": 5}, {"rate": 10, "duration_s": 2}])
    r = synthetic(w)
    assert len(r) == 40 and list(np.bincount(r.stage)) == [20, 20]
    assert np.allclose(np.diff(r.arrival_s[:20]), 0.25)
    assert r.arrival_s[20] == pytest.approx(5.0) and np.allclose(np.diff(r.arrival_s[20:]), 0.1)


@pytest.mark.parametrize("bad,message", [
    ({"rate": 2, "stages": [{"rate": 1, "duration_s": 1}]}, "either rate or stages"),
    ({"num_requests": 5, "stages": [{"rate": 1, "duration_s": 1}]}, "drop num_requests"),
    ({"concurrency": 4, "rate": 2}, "closed loop"),
    ({"input_len": 64, "shared_prefix": {"tokens": 64}}, "shorter than every prompt"),
])
def test_contradictory_workloads_are_refused(bad, message):
    with pytest.raises(ValidationError, match=message):
        ServeWorkload(**bad)


def test_a_runaway_request_count_is_a_clean_error():
    with pytest.raises(SpecError, match="at most"):
        synthetic(ServeWorkload(num_requests=10**12))


def test_repeated_prompts_keep_their_lengths_and_share_the_group_prefix():
    w = ServeWorkload(input_len={"distribution": "uniform", "mean": 600, "stdev": 50, "min": 200}, num_requests=300,
                      shared_prefix={"tokens": 100, "groups": 3, "prompts_per_group": 4})
    r = synthetic(w)
    assert set(r.prompt_id.tolist()) == set(range(12))
    for p in range(12):
        assert len(set(r.input_tokens[r.prompt_id == p].tolist())) == 1
    assert np.array_equal(r.prefix_group, r.prompt_id // 4)


def test_prefix_caching_skips_the_prefill_of_repeated_prompts():
    base = dict(workload={"input_len": 2048, "output_len": 32, "rate": 4, "num_requests": 200,
                          "shared_prefix": {"tokens": 512, "groups": 2, "prompts_per_group": 2}})
    cold = predict_serve(scenario(**base))
    warm = predict_serve(scenario(scheduler={"prefix_caching": True}, **base))
    assert warm.ttft_ms.p50 < 0.5 * cold.ttft_ms.p50
    assert warm.time_breakdown_s["gemm"] < 0.9 * cold.time_breakdown_s["gemm"]  # prompts computed once


def test_a_prefix_cache_larger_than_the_kv_cache_evicts_instead_of_deadlocking():
    sc = scenario(scheduler={"prefix_caching": True, "gpu_memory_utilization": 0.26},
                  workload={"input_len": 3000, "output_len": 16, "rate": 20, "num_requests": 400,
                            "shared_prefix": {"tokens": 100, "groups": 50, "prompts_per_group": 4}})
    res, reqs, out = run(sc)
    assert res.instance.kv_capacity_tokens < 200 * 3000  # the 200 prompts do not all fit
    assert (np.asarray(out.table.finish) > 0).all()


def test_cuda_graph_sizes_are_vllms_and_batches_pad_up_to_them():
    sizes = cuda_graph_sizes(512)
    assert sizes[:4] == [1, 2, 4, 8] and 248 in sizes and 256 in sizes and 264 not in sizes and sizes[-1] == 512
    pad = graph_padding(512)
    assert (pad[3], pad[9], pad[250], pad[257], pad[512]) == (4, 16, 256, 272, 512)


def test_cuda_graphs_remove_launches_from_decode_only():
    eager = scenario(workload={"input_len": 128, "output_len": 256, "num_requests": 16})
    graphs = scenario(scheduler={"cuda_graphs": True}, workload={"input_len": 128, "output_len": 256,
                                                                 "num_requests": 16})
    e, g = predict_serve(eager), predict_serve(graphs)
    assert g.itl_mean_ms < e.itl_mean_ms
    profile = get_profile("h100-sxm")
    res = deploy_scenario(eager, 512, 128)
    kernels = 32 * 12  # a decode step of Llama 3.1 8B launches about a dozen kernels per layer
    saved = (profile.kernel_overhead_s - profile.graph_kernel_overhead_s) * kernels
    assert e.itl_mean_ms - g.itl_mean_ms == pytest.approx(saved * 1e3, rel=0.35)
    assert res.scenario.scheduler.cuda_graph_max_tokens is None  # vLLM's rule: min(2 x max_batch, 512)


def test_async_scheduling_makes_an_arrival_wait_one_more_iteration():
    base = dict(workload={"input_len": 64, "output_len": 400, "rate": 2, "arrival": "constant",
                          "num_requests": 20})
    sync = predict_serve(scenario(**base))
    lag = predict_serve(scenario(scheduler={"async_scheduling": True}, **base))
    step = sync.itl_mean_ms
    assert lag.ttft_ms.mean - sync.ttft_ms.mean == pytest.approx(step, rel=0.5)
    assert lag.itl_mean_ms == pytest.approx(sync.itl_mean_ms, rel=0.05)


def test_a_closed_loop_sends_the_next_request_when_one_finishes():
    res, reqs, out = run(scenario(workload={"concurrency": 1, "num_requests": 5, "input_len": 64, "output_len": 8}))
    finish = np.asarray(out.table.finish)
    assert reqs.arrival_s[0] == 0.0
    assert np.allclose(reqs.arrival_s[1:], finish[:-1])
    eight = predict_serve(scenario(workload={"concurrency": 8, "num_requests": 64}))
    one = predict_serve(scenario(workload={"concurrency": 1, "num_requests": 64}))
    assert eight.output_tokens_per_s > 4 * one.output_tokens_per_s


def test_a_moe_layer_launches_each_projection_once_whatever_the_experts_touched():
    sc = scenario(model="mixtral-8x7b", hardware={"gpus": 2}, deployment={"tp": 2})
    lay = deploy_scenario(sc, 512, 128).instance.layout
    p = lay.dev.profile

    def launches(tokens: float) -> float:
        slow = replace(lay, dev=replace(lay.dev, profile=p.model_copy(update={"kernel_overhead_s": 1.0})))
        free = replace(lay, dev=replace(lay.dev, profile=p.model_copy(update={"kernel_overhead_s": 0.0})))
        return float(token_time(sc_model(sc), slow, tokens, 0.0)["gemm"] - token_time(sc_model(sc), free, tokens,
                                                                                      0.0)["gemm"])

    assert launches(1.0) == pytest.approx(launches(64.0), rel=1e-9)  # two experts touched or all eight: alike


def sc_model(sc):
    from sextant.catalog.models import get_model
    return get_model(sc.model)


def test_stage_latency_is_reported_per_stage():
    r = predict_serve(scenario(workload={"input_len": 256, "output_len": 32, "arrival": "constant",
                                         "stages": [{"rate": 1, "duration_s": 10}, {"rate": 8, "duration_s": 10}]}))
    assert [s.requests for s in r.stages] == [10, 80]
    assert r.stages[1].ttft_ms.mean >= r.stages[0].ttft_ms.mean
    assert r.stages[0].itl_mean_ms > 0


def test_every_latency_row_builds_a_scenario_and_states_its_citation():
    rows = load_latency_ledger()
    assert len(rows) >= 100 and len({r.group for r in rows}) >= 5
    for row in rows:
        row.scenario()
        assert row.source and row.url and row.measured


def test_a_latency_row_compares_each_measured_metric():
    row = next(r for r in load_latency_ledger() if r.id == "GS1")
    stages = compare_row(row, predict_serve(row.scenario()))
    assert len(stages) == 1 and set(stages[0].errors) == {"tpot_mean_ms", "itl_mean_ms"}
    s = stages[0]
    assert s.errors["tpot_mean_ms"] == pytest.approx(s.predicted["tpot_mean_ms"] / s.measured["tpot_mean_ms"] - 1)


def test_the_source_itl_definition_is_predicted_with_the_same_token_count():
    row = next(r for r in load_latency_ledger() if r.id == "IS57").model_copy()
    result = predict_serve(row.scenario())
    (first, *_rest) = compare_row(row, result)
    m, p = first.measured, first.predicted
    counted = (m["e2e_mean_ms"] - m["ttft_mean_ms"]) / m["itl_mean_ms"]
    assert p["itl_mean_ms"] == pytest.approx((p["e2e_mean_ms"] - p["ttft_mean_ms"]) / counted)


def test_the_fitted_graph_kernel_cost_is_the_one_the_profiles_ship():
    record = load_fit_record()
    profiles = yaml.safe_load(open(__import__("sextant.catalog.hardware", fromlist=["x"]).__file__.replace(
        "hardware.py", "data/profiles.yaml")))
    for root, value in record["values_s"].items():
        assert profiles[root]["graph_kernel_overhead_s"] == pytest.approx(value, rel=1e-6)
    assert set(record["held_out"]) >= {"itl", "e2e", "ttft"}


def test_requests_out_writes_each_request_and_matches_the_summary(tmp_path, capsys):
    import csv
    import json

    from sextant.cli.app import main

    out = tmp_path / "requests.csv"
    assert main(["predict", "serve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--concurrency", "4",
                 "--num-requests", "40", "--input-len", "300", "--output-len", "50", "--requests-out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and rows[0]["arrival_s"] == "0.000000"
    ttft = [float(r["ttft_ms"]) for r in rows]
    assert sum(ttft) / len(ttft) == pytest.approx(summary["ttft_ms"]["mean"], rel=1e-4)
    assert main(["predict", "serve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--num-requests", "4",
                 "--requests-out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_more_distinct_prompts_than_requests_stay_cheap_to_draw():
    r = synthetic(ServeWorkload(num_requests=50, shared_prefix={"tokens": 16, "groups": 1_000_000,
                                                               "prompts_per_group": 1_000_000}))
    assert len(r) == 50 and r.prompt_id.max() < 10**12
    with pytest.raises(ValidationError, match="less than or equal"):
        ServeWorkload(shared_prefix={"tokens": 16, "groups": 10**7})
