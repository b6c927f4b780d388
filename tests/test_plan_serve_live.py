"""``plan serve --rate``: the fewest and cheapest GPUs per type for live traffic within objectives."""

from __future__ import annotations

import json

import pytest

from sextant.cli.app import main
from sextant.errors import SpecError
from sextant.plan.serve_capacity import _with, plan_capacity
from sextant.serve.predict import predict_serve
from sextant.spec.serving import ServeScenario


def base(**slo) -> ServeScenario:
    return ServeScenario.model_validate({"model": "llama-3.1-8b", "framework": "vllm-v1-0.15",
                                         "hardware": {"gpu": "h100-sxm", "gpus": 1},
                                         "workload": {"input_len": 512, "output_len": 128}, "slo": slo})


def test_the_plan_meets_its_objectives_when_simulated_again_and_slower_gpus_need_more():
    plan = plan_capacity(base(ttft_ms=400, tpot_ms=60), 12, ["h100-sxm", "a10g"],
                         prices={"h100-sxm": 6.0, "a10g": 1.0})
    by_gpu = {e.gpu: e for e in plan.entries}
    assert set(by_gpu) == {"h100-sxm", "a10g"} and all(e.meets_slo for e in plan.entries)
    assert by_gpu["a10g"].gpus > by_gpu["h100-sxm"].gpus
    for e in plan.entries:  # capacity within the objectives, and the replicas it takes
        assert e.replicas * e.capacity_rps >= 12 > (e.replicas - 1) * e.capacity_rps
        assert e.dollars_per_hour == pytest.approx({"h100-sxm": 6.0, "a10g": 1.0}[e.gpu] * e.gpus)
    assert [e.dollars_per_hour for e in plan.entries] == sorted(e.dollars_per_hour for e in plan.entries)
    best = plan.entries[0]
    again = predict_serve(_with(base(ttft_ms=400, tpot_ms=60), best.gpu, best.tp, best.replicas, 12, 600))
    assert again.ttft_ms.p99 <= 400 and again.tpot_ms.p99 <= 60
    wider = [plan.layouts["h100-sxm"][t] for t in sorted(plan.layouts["h100-sxm"])]
    assert wider == sorted(wider)  # a wider replica serves more


@pytest.mark.parametrize("slo,kw,message", [
    ({}, {}, "needs an objective"),
    ({"tpot_ms": 50}, {"percentile": 0.95}, "50, 90 or 99"),
    ({"tpot_ms": 50}, {"prices": {"l4": 1.0}}, "not among"),
])
def test_bad_plans_are_one_line_errors(slo, kw, message):
    with pytest.raises(SpecError, match=message):
        plan_capacity(base(**slo), 5, ["h100-sxm"], **kw)


def test_the_cli_answers_the_live_traffic_question(capsys):
    assert main(["plan", "serve", "--model", "llama-3.1-8b", "--rate", "8", "--gpu", "h100-sxm,l4",
                 "--input-len", "256", "--output-len", "64", "--tpot-slo", "80", "--price", "l4=0.8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {e["gpu"] for e in plan["entries"]} == {"h100-sxm", "l4"}
    assert main(["plan", "serve", "--model", "llama-3.1-8b", "--rate", "8", "--tpot-slo", "80",
                 "--price", "h100-sxm=abc"]) == 2
    assert "GPU=DOLLARS" in capsys.readouterr().err
    assert main(["plan", "serve", "--model", "llama-3.1-8b", "--ttft-slo", "100"]) == 2
    assert "give --rate" in capsys.readouterr().err


def test_the_cheapest_mix_is_the_exhaustive_optimum():
    import itertools
    import math
    import random

    from sextant.plan.serve_capacity import cheapest_mix

    rng = random.Random(7)
    for _ in range(40):
        types = {f"g{i}": (rng.uniform(1, 30), rng.uniform(0.5, 20)) for i in range(rng.randint(1, 3))}
        rate = rng.uniform(1, 60)
        capacity = {t: c for t, (c, _) in types.items()}
        cost = {t: p for t, (_, p) in types.items()}
        counts, dollars = cheapest_mix(rate, capacity, cost)
        assert sum(n * capacity[t] for t, n in counts.items()) >= rate - 1e-9
        brute = min(sum(n * cost[t] for t, n in zip(types, ns)) for ns in itertools.product(
            *(range(math.ceil(rate / capacity[t]) + 1) for t in types))
            if sum(n * capacity[t] for t, n in zip(types, ns)) >= rate - 1e-9)
        assert dollars == pytest.approx(brute)


def test_a_mix_of_gpu_types_is_reported_when_it_is_cheaper():
    plan = plan_capacity(base(tpot_ms=60), 35, ["h100-sxm", "a10g"], prices={"h100-sxm": 6.88, "a10g": 1.006})
    single = min(e.dollars_per_hour for e in plan.entries)
    if plan.mix is not None:
        assert plan.mix.dollars_per_hour < single and len(plan.mix.parts) == 2
        assert sum(p.rate for p in plan.mix.parts) == pytest.approx(35)
        assert all(p.meets_slo for p in plan.mix.parts)
    else:  # no mix beats one type: then none exists below the single-type cost
        from sextant.plan.serve_capacity import cheapest_mix
        capacity = {e.gpu: e.capacity_rps for e in plan.entries}
        cost = {e.gpu: {"h100-sxm": 6.88, "a10g": 1.006}[e.gpu] * e.tp for e in plan.entries}
        assert cheapest_mix(35, capacity, cost)[1] >= single - 1e-9


def test_the_deployments_a_live_plan_simulates_keep_the_serving_presets_scheduler():
    """A plan's candidate is the scenario on other GPUs: the preset still fills what the user left
    unset (the candidates once ran with the spec's defaults: no CUDA graphs, continuous batching)."""
    from sextant.plan.serve_capacity import _with
    from sextant.resolve.framework import apply_serving_framework
    from sextant.spec.serving import parse_serve_scenario

    base = parse_serve_scenario({"model": "llama-3.1-8b", "framework": "vllm-v1-0.15", "slo": {"tpot_ms": 50},
                                 "scheduler": {"max_batch": 64}, "workload": {"input_len": 512, "output_len": 128}})
    candidate = apply_serving_framework(_with(base, "a10g", 1, 2, 5.0, 100))
    assert candidate.scheduler.cuda_graphs and candidate.scheduler.batching == "chunked"
    assert candidate.scheduler.max_batch == 64  # what the user set stays
    assert (candidate.hardware.gpu, candidate.hardware.gpus, candidate.deployment.replicas) == ("a10g", 2, 2)


def test_unpriced_gpu_types_cost_the_catalogs_dated_list_price_and_a_given_price_wins():
    from sextant.catalog.prices import gpu_price

    plan = plan_capacity(base(tpot_ms=50), 4.0, ["h100-sxm", "l4"], prices={"l4": 0.5})
    listed = gpu_price("h100-sxm")
    assert plan.prices == {"h100-sxm": listed.dollars_per_gpu_hour, "l4": 0.5}
    assert plan.price_sources["l4"] == "--price" and listed.as_of in plan.price_sources["h100-sxm"]
    for entry in plan.entries:
        assert entry.dollars_per_hour == pytest.approx(plan.prices[entry.gpu] * entry.gpus)


def test_every_catalog_price_names_its_offering_date_and_source():
    from sextant.catalog import gpu_names
    from sextant.catalog.prices import gpu_price, priced_gpus

    assert {"h100-sxm", "h200", "b200", "a100-80gb", "a10g", "l4"} <= set(priced_gpus())
    for name in priced_gpus():
        price = gpu_price(name)
        assert name in gpu_names(), f"{name} is not a catalog GPU"
        assert 0.1 < price.dollars_per_gpu_hour < 50
        assert price.source.startswith("https://") and price.as_of and price.provider
    assert gpu_price("rtx-4090") is None  # no cloud lists it: plans leave it unpriced


def test_several_weight_precisions_keep_each_gpu_types_cheapest_and_refuse_what_a_gpu_cannot_run():
    from sextant.plan.serve_capacity import chosen_scenario

    plan = plan_capacity(base(tpot_ms=50), 8.0, ["h100-sxm", "a10g"], precisions=["bf16", "fp8"])
    by_gpu = {e.gpu: e for e in plan.entries}
    assert by_gpu["a10g"].precision == "bf16"  # no FP8 tensor cores
    assert "fp8 tensor cores" in plan.rejected["a10g fp8"]
    h100 = by_gpu["h100-sxm"]
    assert set(plan.layouts) == {"h100-sxm bf16", "h100-sxm fp8", "a10g bf16", "a10g fp8"}
    fp8, bf16 = plan.layouts["h100-sxm fp8"], plan.layouts["h100-sxm bf16"]
    assert fp8[1] > bf16[1]  # FP8 weights halve the bytes each decode step reads
    need = {p: min(t * -(-8.0 // cap) for t, cap in plan.layouts[f"h100-sxm {p}"].items()) for p in ("bf16", "fp8")}
    # The fewest GPUs; a tie goes to the precision listed first (the user's preference).
    assert h100.precision == min(("bf16", "fp8"), key=lambda p: (need[p], p != "bf16"))
    best = chosen_scenario(base(tpot_ms=50), plan)
    assert best.deployment.precision == plan.entries[0].precision
    again = predict_serve(best)
    assert again.tpot_ms.p99 <= 50


def test_a_model_no_node_holds_is_pipelined_over_whole_nodes():
    from sextant.plan.serve_capacity import chosen_scenario

    big = ServeScenario.model_validate({"model": "llama-3.1-405b", "framework": "vllm-v1-0.15",
                                        "hardware": {"gpu": "h100-sxm", "gpus": 8},
                                        "workload": {"input_len": 1024, "output_len": 128},
                                        "slo": {"ttft_ms": 3000, "tpot_ms": 100}})
    plan = plan_capacity(big, 2.0, ["h100-sxm"])
    entry = plan.entries[0]
    assert (entry.tp, entry.pp) == (8, 2) and entry.gpus == 16 * entry.replicas  # 126 layers: pp 2 divides them
    assert "h100-sxm pp2" in plan.layouts and "weights need" in plan.rejected["h100-sxm tp8"]
    again = predict_serve(chosen_scenario(big, plan))
    assert (again.gpus, again.tp, again.pp) == (entry.gpus, 8, 2)
    assert again.tpot_ms.p99 <= 100 and again.ttft_ms.p99 <= 3000
