"""Speculative decoding with the target on the CPU and the draft on the GPU (Dovetail;
sextant.cost.host_compute, serve.offload_plan.plan_cpu_target)."""

from __future__ import annotations

import json

import pytest

from sextant.catalog import build_cluster, get_model
from sextant.cli.app import main
from sextant.cost.host_compute import HOST_GEMM_EFFICIENCY
from sextant.cost.params import count_params
from sextant.cost.tiers import HOST_DRAM_EFFICIENCY
from sextant.errors import SpecError
from sextant.serve.predict import predict_serve
from sextant.spec.serving import ServeScenario

BASE = {"model": "llama-2-13b", "hardware": {"gpu": "rtx-a6000", "gpus": 1, "node": "lambda-vector-a6000"},
        "scheduler": {"max_batch": 1},
        "workload": {"input_len": 128, "output_len": 257, "num_requests": 2},
        "speculative": {"draft_model": "gpt3-350m", "num_tokens": 4, "acceptance_rate": 0.7, "target_device": "cpu"}}


def scenario(**changes) -> ServeScenario:
    data = json.loads(json.dumps(BASE))
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return ServeScenario.model_validate(data)


def params(name: str) -> float:
    return count_params(get_model(name)).total


def test_the_gpu_holds_only_the_draft_and_the_cpu_binds():
    r = predict_serve(scenario())
    target = params("llama-2-13b") * 2 / 1e9
    assert r.memory_gb_per_gpu["weights"] < 1.0  # gpt3-350m in 16 bits
    assert r.memory_gb_per_tier["host"] > target
    assert r.binding_resource == "cpu"
    assert 0 < r.resource_busy_s["gpu"] < 0.1 * r.resource_busy_s["cpu"]


def test_a_verification_step_reads_the_target_weights_from_dram():
    """Five rows per step on a 32-core host: bound by DRAM, so a step is the weights over the
    STREAM bandwidth, and the time per token that over the expected tokens per step."""
    r = predict_serve(scenario())
    node = build_cluster("rtx-a6000", 1, node="lambda-vector-a6000").node
    weights = params("llama-2-13b") * 2
    step_floor = weights / (node.host_memory.read_bytes_per_s * HOST_DRAM_EFFICIENCY)
    a, k = 0.7, 4
    per_step = (1 - a ** (k + 1)) / (1 - a)
    tpot_s = r.tpot_ms.mean / 1e3
    assert tpot_s * per_step >= step_floor
    assert tpot_s * per_step < 1.25 * step_floor  # plus the draft's proposals and attention
    # Compute would not bind: five rows of GEMMs at the CPU's vector peak take a fraction of that.
    compute = 2 * params("llama-2-13b") * (k + 1) / (node.host_cpu.vector_flops * HOST_GEMM_EFFICIENCY)
    assert compute < step_floor


def test_better_drafts_and_faster_memory_speed_the_cpu_target_up():
    base = predict_serve(scenario()).output_tokens_per_s
    better = predict_serve(scenario(speculative={"acceptance_rate": 0.9})).output_tokens_per_s
    assert better > 1.2 * base
    on_gpu_node = predict_serve(scenario(hardware={"gpu": "rtx-a6000", "gpus": 1, "node": "workstation-a6000"}))
    # The generic workstation's host runs at the same DRAM rate but a nominal, slower CPU.
    assert on_gpu_node.output_tokens_per_s <= base


def test_the_gpu_target_is_faster_by_at_most_the_bandwidth_ratio():
    """Both verify steps read the weights; the draft's proposals cost the same in both."""
    cpu = predict_serve(scenario(model="llama-2-7b")).output_tokens_per_s
    gpu = predict_serve(scenario(model="llama-2-7b", speculative={"target_device": "gpu"})).output_tokens_per_s
    cluster = build_cluster("rtx-a6000", 1, node="lambda-vector-a6000")
    ratio = cluster.gpu.memory.read_bytes_per_s / cluster.node.host_memory.read_bytes_per_s
    assert 2 < gpu / cpu < ratio


@pytest.mark.parametrize("changes, fragment", [
    ({"deployment": {"tp": 2}, "hardware": {"gpu": "rtx-a6000", "gpus": 2, "node": "workstation-a6000"}}, "tp, pp"),
    ({"offload": {"weights": "cpu"}}, "host memory already"),
])
def test_cpu_target_rejects_what_it_cannot_model(changes, fragment):
    with pytest.raises(SpecError, match=fragment):
        predict_serve(scenario(**changes))


def test_spec_target_flag(capsys):
    args = ["predict", "serve", "--model", "llama-2-13b", "--gpu", "rtx-a6000", "--node", "lambda-vector-a6000",
            "--gpus", "1", "--max-batch", "1", "--num-requests", "2", "--input-len", "64", "--output-len", "64"]
    assert main([*args, "--spec-target", "cpu"]) == 2
    assert "--draft-model" in capsys.readouterr().err
    assert main([*args, "--draft-model", "gpt3-350m", "--spec-target", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["binding_resource"] == "cpu"
