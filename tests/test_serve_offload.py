"""Serving with weights, experts or the KV cache below the GPU (sextant.cost.streaming,
sextant.serve.offload_plan) and the serving-offload ledger."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sextant.catalog import build_cluster, get_model, get_profile
from sextant.cli.app import main
from sextant.cost.inference import weight_bytes_per_gpu
from sextant.cost.params import count_params
from sextant.cost.precision import weight_bytes
from sextant.cost.streaming import Streaming, expected_misses, expert_popularity, hit_rate, trace_popularity
from sextant.cost.tiers import tier_rates
from sextant.errors import InfeasibleError, SpecError
from sextant.serve.deploy import deploy_scenario
from sextant.serve.predict import predict_serve
from sextant.spec.serving import ServeScenario
from sextant.validate.serve import validate_serving

BASE = {"model": "opt-30b", "hardware": {"gpu": "rtx-a6000", "gpus": 1, "node": "lambda-vector-a6000"},
        "deployment": {"precision": "fp16"},
        "scheduler": {"batching": "static", "max_batch": 8, "gpu_memory_utilization": 0.95},
        "workload": {"input_len": 128, "output_len": 17, "num_requests": 8},
        "offload": {"weights": "cpu"}}


def scenario(**changes) -> ServeScenario:
    data = json.loads(json.dumps(BASE))
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return ServeScenario.model_validate(data)


def link_rate(pinned: bool = True) -> float:
    cluster = build_cluster("rtx-a6000", 1, node="lambda-vector-a6000")
    profile = get_profile("rtx-a6000")
    rate = tier_rates(cluster, profile).host_to_gpu
    return rate if pinned else rate * profile.pageable_copy_efficiency


def test_a_streamed_decode_step_takes_the_weights_over_the_link():
    r = predict_serve(scenario())
    weights = weight_bytes_per_gpu(get_model("opt-30b"), deploy_scenario(scenario(), 145, 128).instance.layout)
    layers = get_model("opt-30b").num_layers
    # Eight sequences leave the GPU idle most of a step: the link binds, plus one layer's fetch.
    assert r.binding_resource == "host_to_gpu"
    assert r.tpot_ms.mean / 1e3 == pytest.approx(weights / link_rate() * (1 + 1 / layers), rel=1e-3)
    assert r.memory_gb_per_tier["host"] == pytest.approx(weights / 2**30)  # GiB, as every memory figure


def test_pageable_copies_slow_a_fetch_bound_step_by_the_profile_ratio():
    pinned = predict_serve(scenario()).tpot_ms.mean
    pageable = predict_serve(scenario(offload={"weights": "cpu", "pinned": False})).tpot_ms.mean
    assert pageable / pinned == pytest.approx(1 / get_profile("rtx-a6000").pageable_copy_efficiency, rel=1e-3)


def test_a_large_prefill_hides_the_stream_behind_compute():
    big = {"max_batch": 28}  # one static batch: 28 x 1025 tokens fit the streamed run's KV cache
    work = {"input_len": 1024, "output_len": 1, "num_requests": 28}
    streamed = predict_serve(scenario(scheduler=big, workload=work))
    # The same model resident on a GPU with room for it: streaming costs one layer's fetch at most.
    resident = predict_serve(scenario(scheduler=big, workload=work, offload={"weights": "none"},
                                      hardware={"gpu_memory_gib": 400}))
    assert streamed.binding_resource == "gpu"
    layers = get_model("opt-30b").num_layers
    assert 1.0 <= streamed.makespan_s / resident.makespan_s <= 1 + 1.5 / layers
    assert streamed.model_tflops_per_gpu > 50


def test_nvme_binds_when_the_drive_is_slower_than_the_link():
    r = predict_serve(scenario(offload={"weights": "nvme"}))
    assert r.binding_resource == "nvme"
    assert r.memory_gb_per_tier["nvme"] > 50 and r.memory_gb_per_tier["host"] == 0
    slower = predict_serve(scenario()).tpot_ms.mean
    assert r.tpot_ms.mean > slower  # 5.6 GB/s of NVMe against 25 GB/s of PCIe


def test_resident_layers_shorten_the_stream_but_leave_less_room_for_the_cache():
    full = deploy_scenario(scenario(), 145, 128)
    partial = deploy_scenario(scenario(offload={"weights": "cpu", "resident_fraction": 0.3}), 145, 128)
    assert partial.instance.kv_capacity_tokens < full.instance.kv_capacity_tokens
    assert partial.instance.offload.host_weight_bytes == pytest.approx(0.7 * full.instance.offload.host_weight_bytes)
    assert predict_serve(scenario(offload={"weights": "cpu", "resident_fraction": 0.3})).tpot_ms.mean < \
        predict_serve(scenario()).tpot_ms.mean


def test_w4a16_groups_and_zero_points_set_the_bytes_per_weight():
    assert weight_bytes("w4a16") == pytest.approx(0.5 + 2 / 128)
    assert weight_bytes("w4a16", 64, True) == pytest.approx(0.5625)
    assert weight_bytes("fp8", 64, True) == 1.0
    fp16 = deploy_scenario(scenario(), 145, 128).instance.offload.host_weight_bytes
    w4 = deploy_scenario(scenario(deployment={"precision": "w4a16", "weight_group_size": 64, "weight_zero_point": True}),
                 145, 128).instance.offload.host_weight_bytes
    c = count_params(get_model("opt-30b"))
    linear = c.layers_total - c.num_dense_layers * c.norms_layer  # embeddings and norms stay 16-bit
    assert fp16 - w4 == pytest.approx(linear * (2 - 0.5625))


def test_expected_expert_misses_follow_the_routing_distribution():
    uniform = expert_popularity("uniform", 8)
    # One token with top-2 routing touches exactly two experts; a huge batch touches all eight.
    assert expected_misses(uniform, 2, 0, np.array([1.0]))[0] == pytest.approx(2.0)
    assert expected_misses(uniform, 2, 0, np.array([1e4]))[0] == pytest.approx(8.0)
    # Caching the two most popular experts of a skewed layer serves most of the routing mass.
    zipf = expert_popularity("zipf", 8, 1.2)
    assert hit_rate(zipf, 2) > hit_rate(uniform, 2) == pytest.approx(0.25)
    tokens = np.array([1.0, 4.0, 16.0])
    cached = expected_misses(zipf, 2, 2, tokens)
    assert np.all(cached < expected_misses(zipf, 2, 0, tokens))
    assert np.all(np.diff(cached) > 0)


def test_a_routing_trace_gives_each_layer_its_own_popularity(tmp_path):
    path = tmp_path / "routes.csv"
    path.write_text("layer,expert\n" + "0,3\n" * 6 + "0,1\n" * 2 + "1,0\n1,1\n1,2\n1,3\n")
    shares = trace_popularity(path, 3, 4)
    assert shares[0].tolist() == [0.75, 0.25, 0.0, 0.0]
    assert shares[1].tolist() == [0.25] * 4
    assert shares[2].tolist() == pytest.approx((shares[0] + shares[1]) / 2)  # untraced layer
    assert hit_rate(shares, 1) == pytest.approx((0.75 + 0.25 + 0.5) / 3)
    path.write_text("layer,expert\n0,9\n")
    with pytest.raises(SpecError, match="must lie in"):
        trace_popularity(path, 3, 4)


def test_streaming_experts_fetches_fewer_bytes_with_a_cache_and_more_with_a_batch():
    moe = {"model": "mixtral-8x7b", "hardware": {"gpu": "rtx-4090", "gpus": 1, "node": None},
           "deployment": {"precision": "w4a16"}, "offload": {"weights": "cpu", "streamed": "experts",
                                                             "expert_popularity": "zipf"}}

    def step(batch, resident):
        sc = scenario(**{**moe, "offload": {**moe["offload"], "resident_fraction": resident},
                         "scheduler": {"max_batch": batch}, "workload": {"input_len": 64, "output_len": 9,
                                                                         "num_requests": batch}})
        return predict_serve(sc).tpot_ms.mean

    assert step(1, 0.25) < step(1, 0.0)
    assert step(1, 0.25) < step(8, 0.25)  # more tokens route to more experts
    assert deploy_scenario(scenario(**moe), 73, 64).instance.offload.stream.expert_hit_rate == 0.0
    cached = scenario(**{**moe, "offload": {**moe["offload"], "resident_fraction": 0.25}})
    assert deploy_scenario(cached, 73, 64).instance.offload.stream.expert_hit_rate == pytest.approx(
        hit_rate(expert_popularity("zipf", 8), 2))


def test_kv_cache_in_host_memory_raises_capacity_and_runs_attention_on_the_cpu():
    gpu_kv = deploy_scenario(scenario(), 145, 128).instance
    host_kv = deploy_scenario(scenario(offload={"weights": "cpu", "kv_cache": "cpu"}), 145, 128).instance
    assert host_kv.kv_capacity_tokens > 2 * gpu_kv.kv_capacity_tokens
    long = {"workload": {"input_len": 1536, "output_len": 17, "num_requests": 32}, "scheduler": {"max_batch": 32}}
    one = predict_serve(scenario(**long, offload={"weights": "cpu", "kv_cache": "cpu"}))
    four = predict_serve(scenario(**long, offload={"weights": "cpu", "kv_cache": "cpu", "micro_batches": 4}))
    assert one.resource_busy_s["cpu"] > 0
    assert one.resource_busy_s["cpu"] == pytest.approx(four.resource_busy_s["cpu"])
    assert four.makespan_s <= one.makespan_s


def test_streaming_iteration_combines_the_three_resources():
    st = Streaming(layers=10, micro_batches=1, dense_fetch_s=1.0, expert_fetch_s=0.0, miss_tokens=np.zeros(0),
                   miss_experts=np.zeros(0), cpu_per_context_s=0.0, kv_to_host_per_token_s=0.0,
                   kv_from_host_per_token_s=0.0, expert_hit_rate=1.0)
    assert st.iteration(0.2, 0.0, 8, 0.0, 0, 0.0)[0] == pytest.approx(1.1)  # fetch-bound, one layer unhidden
    assert st.iteration(3.0, 0.0, 8, 0.0, 0, 0.0)[0] == pytest.approx(3.1)  # compute-bound
    assert st.iteration_s(0.5, 0.5, (0.0,), 0.0) == pytest.approx(1.0)  # GPU and CPU in turn
    two = Streaming(**{**st.__dict__, "micro_batches": 2})
    assert two.iteration_s(0.5, 0.5, (0.0,), 0.0) == pytest.approx(0.75)


@pytest.mark.parametrize(("changes", "message"), [
    ({"model": "opt-30b", "offload": {"weights": "cpu", "streamed": "experts"}}, "mixture-of-experts"),
    ({"deployment": {"precision": "fp16", "pp": 2}, "hardware": {"gpu": "rtx-a6000", "gpus": 2}}, "pp=1"),
    ({"hardware": {"gpu": "gh200", "gpus": 1, "node": "gh200-superchip"}, "offload": {"weights": "nvme"}},
     "no NVMe"),
    ({"speculative": {"draft_model": "gpt3-125m"}, "scheduler": {"batching": "continuous"}}, "speculative"),
])
def test_unsupported_offload_settings_fail_with_one_line(changes, message):
    with pytest.raises(SpecError, match=message):
        predict_serve(scenario(**changes))


def test_weights_beyond_host_memory_are_infeasible():
    with pytest.raises(InfeasibleError, match="host memory"):
        predict_serve(scenario(model="opt-175b"))  # 350 GB of fp16 weights, 211 GiB of host memory


def test_the_serving_offload_ledger_rows_are_bound_where_their_systems_say():
    report = validate_serving(builtin="serving-offload.yaml")
    assert {r.id for r in report.rows} >= {"ZI1", "ZI5", "DI1"}
    assert all(r.fits and r.predicted > 0 for r in report.rows)
    from sextant.validate.serve import load_serve_ledger

    rows = {row.id: row for row in load_serve_ledger(builtin="serving-offload.yaml")}
    assert predict_serve(rows["ZI3"].scenario()).binding_resource == "host_to_gpu"
    assert predict_serve(rows["DI1"].scenario()).binding_resource == "gpu"


def test_nvme_streamed_generation_follows_the_volume_read_rate():
    """DeepNVMe's Llama3-70B runs on one H200 with four and eight Gen5 drives striped (27 and 48
    GB/s): decode re-reads every weight from the drives each token, so throughput rises with the
    read rate, a little less than in proportion because the prefill is compute-bound on both."""
    from sextant.validate.serve import load_serve_ledger

    rows = {row.id: row for row in load_serve_ledger(builtin="serving-offload.yaml")}
    four, eight = (predict_serve(rows[i].scenario()) for i in ("DN9", "DN10"))
    assert four.binding_resource == eight.binding_resource == "nvme"
    speedup = eight.output_tokens_per_s / four.output_tokens_per_s
    assert 1.5 < speedup < 48 / 27


def test_cli_streams_weights_and_names_the_binding_resource(capsys):
    code = main(["predict", "serve", "--model", "opt-30b", "--gpu", "rtx-a6000", "--gpus", "1", "--precision", "fp16",
                 "--batching", "static", "--max-batch", "4", "--input-len", "64", "--output-len", "5",
                 "--num-requests", "4", "--offload-weights", "cpu", "--pageable"])
    out = capsys.readouterr().out
    assert code == 0
    assert "bound by: host-to-GPU link" in out and "pageable" in out
    code = main(["predict", "serve", "--model", "opt-30b", "--gpu", "rtx-a6000", "--offload-weights", "disk"])
    assert code == 2
    assert "--offload-weights" in capsys.readouterr().err
