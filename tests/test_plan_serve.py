"""``plan serve``: the placement and batch search for one GPU (sextant.plan.serve_search)."""

from __future__ import annotations

import json

import pytest

from sextant.cli.app import main
from sextant.errors import InfeasibleError, SpecError
from sextant.plan.serve_search import ServePolicy, _scenario, plan_serve
from sextant.serve.predict import predict_serve
from sextant.spec.serving import parse_serve_scenario


def base(**workload):
    return parse_serve_scenario({
        "model": "opt-30b", "framework": "flexgen-2023", "deployment": {"precision": "fp16"},
        "hardware": {"gpu": "t4", "gpus": 1, "node": "gcp-n1-highmem-32-t4"},
        "workload": {"input_len": 512, "output_len": 32, "num_requests": 64, **workload}})


@pytest.fixture(scope="module")
def plan():
    return plan_serve(base(), top=3)


def test_a_model_larger_than_the_gpu_is_planned_off_it(plan):
    # 60 GB of fp16 weights on a 16 GB T4: nothing runs with every weight on the GPU.
    assert all(e.policy.weights != "none" for e in plan.strategies)
    assert plan.rejected.get("GPU memory", 0) > 0
    assert plan.configs_feasible < plan.configs_evaluated
    assert plan.best_policy.weights in ("cpu", "nvme")


def test_the_best_entry_is_what_predict_serve_says_for_it(plan):
    tree = base().model_dump(exclude_unset=True)
    again = predict_serve(_scenario(tree, plan.best_policy, 64))
    assert again.output_tokens_per_s == pytest.approx(plan.best.output_tokens_per_s, rel=1e-9)
    assert [e.output_tokens_per_s for e in plan.top] == sorted((e.output_tokens_per_s for e in plan.top), reverse=True)
    assert plan.top[0].output_tokens_per_s == plan.best.output_tokens_per_s


def test_every_placement_is_reported_once_with_what_binds_it(plan):
    strategies = [e.strategy for e in plan.strategies]
    assert len(strategies) == len(set(strategies))
    assert {e.binding_resource for e in plan.strategies} >= {"nvme", "host_to_gpu"}
    # The more of the weights the drives hold, the slower: they read at 1.6 GB/s, the link 12.
    by_share = {e.policy.nvme_fraction: e.output_tokens_per_s for e in plan.strategies
                if e.policy.weights == "cpu" and e.policy.kv_cache == "cpu" and e.policy.kv_attention == "cpu"}
    shares = sorted(by_share)
    assert len(shares) == 4 and all(by_share[a] > by_share[b] for a, b in zip(shares, shares[1:]))


def test_a_model_that_fits_keeps_its_weights_on_the_gpu():
    plan = plan_serve(parse_serve_scenario({
        "model": "opt-6.7b", "framework": "flexgen-2023", "deployment": {"precision": "fp16"},
        "hardware": {"gpu": "a100-80gb", "gpus": 1},
        "workload": {"input_len": 128, "output_len": 16, "num_requests": 32}}), top=1)
    assert plan.best_policy.weights == "none"
    assert plan.best_policy.max_batch == 32


def test_kv_only_offload_keeps_every_weight_on_the_gpu():
    """The KV cache in DRAM does not move the weights: OPT-30B's 60 GB still do not fit a T4."""
    sc = base().model_dump(exclude_unset=True)
    sc["offload"] = {"kv_cache": "cpu"}
    with pytest.raises(InfeasibleError) as err:
        predict_serve(parse_serve_scenario(sc))
    assert err.value.resource == "GPU memory"


def test_requests_arriving_over_time_are_refused():
    with pytest.raises(SpecError, match="offline"):
        plan_serve(base(rate=1.0))


def test_cli_json_lists_the_search(capsys):
    code = main(["plan", "serve", "--model", "opt-30b", "--gpu", "t4", "--node", "gcp-n1-highmem-32-t4",
                 "--framework", "flexgen-2023", "--precision", "fp16", "--input-len", "512", "--output-len", "32",
                 "--num-requests", "16", "--top", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["configs_evaluated"] >= out["configs_feasible"] > 0
    assert len(out["top"]) == 2 and out["best"]["output_tokens_per_s"] == out["top"][0]["output_tokens_per_s"]
    assert set(out["rejected"]) <= {"GPU memory", "KV cache", "host memory", "NVMe"}


def predicted_with_printed_flags(plan, scenario_flags: list[str], capsys) -> float:
    """``predict serve`` through the CLI with the scenario's flags and the plan's printed ones."""
    from sextant.cli.plan_serve_cmds import _flags

    flags = _flags(plan.best_policy).split()
    assert main(["predict", "serve", "--gpus", "1", *scenario_flags, *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["output_tokens_per_s"]


def test_the_printed_flags_predict_the_best_entry(plan, capsys):
    predicted = predicted_with_printed_flags(plan, [
        "--model", "opt-30b", "--gpu", "t4", "--node", "gcp-n1-highmem-32-t4", "--framework", "flexgen-2023",
        "--precision", "fp16", "--input-len", "512", "--output-len", "32", "--num-requests", "64"], capsys)
    assert predicted == pytest.approx(plan.best.output_tokens_per_s, rel=1e-9)


def test_a_dense_model_is_never_planned_with_expert_streaming(plan):
    assert all(e.policy.streamed == "all" for e in plan.strategies)


def test_a_kv_cache_on_nvme_is_never_faster_than_in_dram():
    """The premise that lets the search skip NVMe-cache ladders where DRAM holds the cache: the
    drives add reads and writes to the same link traffic."""
    tree = base().model_dump(exclude_unset=True)
    slower = 0
    for on_nvme, attention, batch in ((0.0, "cpu", 32), (0.25, "gpu", 16), (0.0, "gpu", 8)):
        speeds = {}
        for home in ("cpu", "nvme"):
            policy = ServePolicy(weights="cpu", resident_fraction=0.0, nvme_fraction=on_nvme, kv_cache=home,
                                 kv_attention=attention, max_batch=batch, micro_batches=2)
            speeds[home] = predict_serve(_scenario(tree, policy, batch)).output_tokens_per_s
        assert speeds["nvme"] <= speeds["cpu"]
        slower += speeds["nvme"] < speeds["cpu"]
    assert slower >= 2  # equal only where the link, not the drives, binds both


def moe_base(popularity: str):
    """Mixtral-8x7B in 4-bit (23 GB of weights) on one 24 GB RTX 4090, four short requests."""
    return parse_serve_scenario({
        "model": "mixtral-8x7b", "deployment": {"precision": "w4a16"},
        "hardware": {"gpu": "rtx-4090", "gpus": 1, "node": "fuyou-rtx4090-server"},
        "workload": {"input_len": 128, "output_len": 16, "num_requests": 4},
        "offload": {"expert_popularity": popularity}})


@pytest.fixture(scope="module")
def moe_plan():
    return plan_serve(moe_base("zipf"), top=2)


def test_a_moe_model_streams_only_its_routed_experts(moe_plan):
    """The dense parts stay on the GPU and a batch of four fetches only the experts it routes to:
    fewer bytes over the link than streaming whole layers."""
    best = moe_plan.best_policy
    assert best.weights == "cpu" and best.streamed == "experts"
    fastest = {kind: max(e.output_tokens_per_s for e in moe_plan.strategies if e.policy.streamed == kind)
               for kind in ("all", "experts")}
    assert fastest["experts"] > fastest["all"]


def test_skewed_routing_makes_the_expert_cache_pay(moe_plan):
    """Under Zipf routing the most popular experts take most tokens, so the plan caches them; the
    same placement under uniform routing misses more and runs slower."""
    best = moe_plan.best_policy
    assert best.resident_fraction > 0
    uniform = predict_serve(_scenario(moe_base("uniform").model_dump(exclude_unset=True), best, 4))
    assert uniform.output_tokens_per_s < moe_plan.best.output_tokens_per_s
    uncached = {e.policy.resident_fraction: e.output_tokens_per_s for e in moe_plan.strategies
                if e.policy.streamed == "experts" and e.policy.weights == "cpu" and e.policy.kv_cache == "gpu"}
    assert uncached[0.0] < uncached[best.resident_fraction]


def test_the_printed_flags_of_an_expert_plan_predict_its_best(moe_plan, capsys):
    from sextant.cli.plan_serve_cmds import _flags

    assert "--streamed" in _flags(moe_plan.best_policy).split()
    predicted = predicted_with_printed_flags(moe_plan, [
        "--model", "mixtral-8x7b", "--gpu", "rtx-4090", "--node", "fuyou-rtx4090-server", "--precision", "w4a16",
        "--input-len", "128", "--output-len", "16", "--num-requests", "4", "--expert-popularity", "zipf"], capsys)
    assert predicted == pytest.approx(moe_plan.best.output_tokens_per_s, rel=1e-9)


def test_the_best_placement_is_refined_between_its_grid_points():
    from sextant.plan.serve_search import _finer

    layers = ServePolicy(weights="cpu", resident_fraction=0.25, nvme_fraction=0.0, kv_cache="cpu",
                         kv_attention="cpu", max_batch=1, micro_batches=1)
    assert [p.resident_fraction for p in _finer(layers, 0)] == pytest.approx(
        [0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.45])
    assert [p.resident_fraction for p in _finer(layers.model_copy(update={"resident_fraction": 0.75}), 0)][-1] == 0.95
    # All on NVMe: the DRAM/NVMe splits next to it; a split: its neighbours on both sides.
    on_nvme = _finer(layers.model_copy(update={"weights": "nvme", "resident_fraction": 0.0}), 0)
    assert [(p.weights, p.nvme_fraction) for p in on_nvme] == [("cpu", 0.8), ("cpu", 0.85), ("cpu", 0.9), ("cpu", 0.95)]
    # Eight experts per layer: whole experts, the grid's 6 of 8 cached refined to 5 and 7.
    experts = layers.model_copy(update={"streamed": "experts", "resident_fraction": 0.75})
    assert [p.resident_fraction for p in _finer(experts, 8)] == [5 / 8, 7 / 8]
    assert _finer(layers.model_copy(update={"weights": "none", "kv_cache": "gpu"}), 0) == []


def test_the_refinement_finds_flexgens_own_placement_for_opt_30b(plan):
    """FlexGen's policy for OPT-30B on the T4 (section 6.1) keeps 20% of the weights on the GPU,
    the rest and the KV cache in DRAM, with attention on the CPU: off the quarter grid, between
    the 0% that fits and the 25% that does not."""
    p = plan.best_policy
    assert (p.weights, p.streamed, p.kv_cache, p.kv_attention) == ("cpu", "all", "cpu", "cpu")
    assert p.resident_fraction == pytest.approx(0.2)
    fitted = {e.policy.resident_fraction for e in plan.strategies if e.policy.weights == "cpu"}
    assert 0.25 not in fitted and 0.0 in fitted


def test_a_routing_trace_is_counted_once_for_the_whole_search(tmp_path):
    """Every candidate reads the same trace: it is counted once, and the plan under a trace that
    routes most tokens to two experts per layer caches experts, as under Zipf routing."""
    from sextant.cost.streaming import _count_trace

    path = tmp_path / "routing.csv"
    lines = ["layer,expert"] + [f"{layer},{expert}" for layer in range(32) for expert in [0] * 6 + [1] * 3 + [2, 3, 4, 5]]
    path.write_text("\n".join(lines) + "\n")
    tree = moe_base("uniform").model_dump(exclude_unset=True)
    tree["offload"] = {"routing_trace": str(path)}
    before = _count_trace.cache_info().misses
    traced = plan_serve(parse_serve_scenario(tree), top=1)
    assert _count_trace.cache_info().misses == before + 1
    assert traced.best_policy.streamed == "experts" and traced.best_policy.resident_fraction > 0


# ---- several GPUs: tensor-parallel replicas --------------------------------------------------

def several(gpus: int = 6, **deployment):
    return parse_serve_scenario({
        "model": "llama-2-13b", "deployment": {"precision": "fp16", **deployment},
        "hardware": {"gpu": "a10g", "gpus": gpus, "node": "aws-g5"},
        "workload": {"input_len": 128, "output_len": 8, "num_requests": 16}})


@pytest.fixture(scope="module")
def replicas_plan():
    return plan_serve(several(), top=2)


def test_every_degree_that_splits_the_gpus_and_the_heads_is_searched(replicas_plan):
    # Six GPUs, 40 attention heads and 40 layers: tp 3 and 6 do not divide the heads; 1 and 2 do,
    # as six and three replicas. Pipeline stages must divide the layers: 2 of one GPU each (three
    # replicas); 3 and 6 stages do not divide 40 layers.
    layouts = {(e.policy.tp, e.policy.pp, e.policy.replicas) for e in replicas_plan.strategies}
    assert layouts == {(1, 1, 6), (2, 1, 3), (1, 2, 3)}
    assert all(e.policy.gpus == 6 for e in replicas_plan.strategies)
    # 26 GB of fp16 weights do not fit one 24 GB A10G: one-GPU replicas must stream them.
    assert all(e.policy.weights != "none" for e in replicas_plan.strategies if e.policy.tp * e.policy.pp == 1)
    assert replicas_plan.best.gpus == 6 and replicas_plan.best.replicas == replicas_plan.best_policy.replicas


def test_the_printed_flags_predict_the_best_of_several_gpus(replicas_plan, capsys):
    from sextant.cli.plan_serve_cmds import _flags

    flags = _flags(replicas_plan.best_policy).split()
    assert "--gpus" in flags and "--tp" in flags
    assert main(["predict", "serve", "--model", "llama-2-13b", "--gpu", "a10g", "--node", "aws-g5",
                 "--precision", "fp16", "--input-len", "128", "--output-len", "8", "--num-requests", "16",
                 *flags, "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["output_tokens_per_s"]
    assert predicted == pytest.approx(replicas_plan.best.output_tokens_per_s, rel=1e-9)


def test_a_given_degree_is_kept():
    plan = plan_serve(several(8, tp=4), top=1)
    # tp 4 kept: two replicas, or one of two stages.
    assert {(e.policy.tp, e.policy.pp, e.policy.replicas) for e in plan.strategies} == {(4, 1, 2), (4, 2, 1)}


def test_a_degree_that_does_not_divide_the_gpus_or_leaves_a_replica_idle_is_refused():
    with pytest.raises(SpecError, match="does not divide"):
        plan_serve(several(8, tp=3))
    idle = parse_serve_scenario({**several(8, tp=1).model_dump(exclude_unset=True),
                                 "workload": {"input_len": 128, "output_len": 8, "num_requests": 4}})
    with pytest.raises(SpecError, match="each needs a request"):
        plan_serve(idle)


def test_pipelined_replicas_hold_the_model_on_their_gpus(replicas_plan):
    """Offloaded serving streams each GPU's tensor-parallel shard, so only replicas without
    stages are offloaded; a pipelined replica runs a batch per stage."""
    staged = [e for e in replicas_plan.strategies if e.policy.pp > 1]
    assert staged and all(not e.policy.offloaded for e in staged)
    assert any(e.policy.offloaded for e in replicas_plan.strategies if e.policy.pp == 1)


A10G_70B = {"model": "llama-3.1-70b", "deployment": {"precision": "fp16"},
            "hardware": {"gpu": "a10g", "gpus": 8, "node": "aws-g5"},
            "workload": {"input_len": 512, "output_len": 64, "num_requests": 256}}


@pytest.fixture(scope="module")
def a10g_plan():
    return plan_serve(parse_serve_scenario(A10G_70B), top=3)


def test_pipeline_stages_beat_tensor_parallelism_over_pcie(a10g_plan):
    """Eight A10Gs share only PCIe: tp 8's two all-reduces per layer cost more than the
    activation sends between stages, so a pipelined layout wins, and its printed flags predict
    what the plan reports (to rounding)."""
    import io

    from rich.console import Console

    from sextant.cli.plan_serve_cmds import _flags, render_plan_serve

    plan = a10g_plan
    best = plan.best_policy
    assert best.pp > 1 and not best.offloaded
    tp8 = max(e.output_tokens_per_s for e in plan.strategies if e.policy.tp == 8 and e.policy.pp == 1)
    assert plan.best.output_tokens_per_s > tp8
    assert plan.best.time_breakdown_s["communication"] < plan.best.time_breakdown_s["gemm"]
    flags = _flags(best).split()
    assert flags[flags.index("--pp") + 1] == str(best.pp)
    result = predict_serve(parse_serve_scenario({
        "model": "llama-3.1-70b", "hardware": {"gpu": "a10g", "gpus": 8, "node": "aws-g5"},
        "deployment": {"precision": "fp16", "tp": best.tp, "pp": best.pp, "replicas": best.replicas},
        "scheduler": {"max_batch": best.max_batch},
        "workload": {"input_len": 512, "output_len": 64, "num_requests": 256}}))
    assert result.output_tokens_per_s == pytest.approx(plan.best.output_tokens_per_s, rel=1e-9)
    out = io.StringIO()
    render_plan_serve(plan, 3, Console(file=out, width=120))
    assert f"tp{best.tp} pp{best.pp} x {best.replicas}" in out.getvalue() and "per pipeline stage" in out.getvalue()


def test_given_pipeline_stages_are_kept_or_refused():
    kept = plan_serve(several(8, pp=2), top=1)
    assert {e.policy.pp for e in kept.strategies} == {2}
    assert all(e.policy.gpus == 8 for e in kept.strategies)
    with pytest.raises(SpecError, match="does not divide"):
        plan_serve(several(8, pp=3))
    with pytest.raises(SpecError, match="pp=3 does not divide the 40 layers"):
        plan_serve(several(6, tp=2, pp=3))  # 40 layers in 3 stages
    with pytest.raises(SpecError, match="pp=3 does not divide the 40 layers"):
        plan_serve(several(6, pp=3))  # tp searched: still the layers, not the degrees
    # Stages given alone leave tp to the search: two engines of tp 4 x pp 2 serve 4 requests.
    few = parse_serve_scenario({**several(8, pp=2).model_dump(exclude_unset=True),
                                "workload": {"input_len": 128, "output_len": 8, "num_requests": 4}})
    assert {(e.policy.tp, e.policy.pp) for e in plan_serve(few, top=1).strategies} == {(2, 2), (4, 2)}


def test_cli_takes_pipeline_stages(capsys):
    assert main(["plan", "serve", "--model", "llama-2-13b", "--gpu", "a10g", "--node", "aws-g5", "--gpus", "8",
                 "--pp", "2", "--precision", "fp16", "--input-len", "128", "--output-len", "8",
                 "--num-requests", "16", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["best_policy"]["pp"] == 2 and plan["best"]["pp"] == 2 and plan["best"]["gpus"] == 8
    assert main(["plan", "serve", "--model", "llama-2-13b", "--gpu", "a10g", "--node", "aws-g5", "--gpus", "8",
                 "--precision", "fp16", "--input-len", "128", "--output-len", "8", "--num-requests", "16",
                 "--tpot-slo", "40", "--json"]) == 0
    bounded = json.loads(capsys.readouterr().out)
    assert bounded["best"]["tpot_ms"]["p99"] <= 40 and bounded["best"]["slo_attainment"] == 1.0


def test_a_tpot_objective_trades_throughput_for_latency(a10g_plan):
    """Bounding the time per output token caps the batch: the plan is the fastest whose every
    request decodes within the bound. A pipelined replica passes each token through all its
    stages in turn, so under a tight bound tp 8 wins where stages win on throughput alone."""
    bounded = plan_serve(parse_serve_scenario({**A10G_70B, "slo": {"tpot_ms": 50}}), top=3)
    assert bounded.best.tpot_ms.p99 <= 50 and bounded.best.slo_attainment == 1.0
    assert bounded.best_policy.pp == 1 and a10g_plan.best_policy.pp > 1
    assert bounded.best.output_tokens_per_s < a10g_plan.best.output_tokens_per_s
    assert bounded.rejected["TPOT objective"] > 0
    assert all(e.tpot_ms <= 50 for e in bounded.strategies) and bounded.tpot_slo_ms == 50
    assert max(e.tpot_ms for e in a10g_plan.strategies) > 50  # unbounded, some placements decode slower
    looser = plan_serve(parse_serve_scenario({**A10G_70B, "slo": {"tpot_ms": 80}}), top=3)
    assert bounded.best.output_tokens_per_s <= looser.best.output_tokens_per_s <= a10g_plan.best.output_tokens_per_s
    assert looser.best.tpot_ms.p99 <= 80
    with pytest.raises(InfeasibleError, match="decodes within 5 ms per token"):
        plan_serve(parse_serve_scenario({**A10G_70B, "slo": {"tpot_ms": 5}}))


def test_a_ttft_objective_is_refused_offline():
    with pytest.raises(SpecError, match="time to first token is mostly queueing"):
        plan_serve(parse_serve_scenario({**A10G_70B, "slo": {"ttft_ms": 500}}))


def test_the_plan_runs_on_the_node_of_a_profile_that_names_its_gpu(tmp_path):
    """A profile file for a T4 with no --gpu: the plan's node, and so its drives and host
    memory, are the T4's usual node, the one the candidates are simulated on."""
    from sextant.catalog.hardware import get_gpu, get_profile

    path = tmp_path / "t4.json"
    path.write_text(get_profile("t4").model_dump_json())
    plan = plan_serve(parse_serve_scenario({
        "model": "opt-6.7b", "deployment": {"precision": "fp16"}, "hardware": {"profile": str(path), "gpus": 1},
        "workload": {"input_len": 128, "output_len": 8, "num_requests": 8}}), top=1)
    assert plan.gpu == "t4" and plan.node == get_gpu("t4").default_node


def test_printed_flags_leave_out_settings_at_their_defaults():
    from sextant.cli.plan_serve_cmds import _flags

    p = ServePolicy(weights="cpu", resident_fraction=0.25, nvme_fraction=0.0, kv_cache="gpu", kv_attention="cpu",
                    max_batch=8, micro_batches=1)
    assert _flags(p) == "--max-batch 8 --offload-weights cpu --resident-fraction 0.25"
