"""FlexGen's three-tier placement in serving (Sheng et al. ICML 2023, section 4.2): weights split
between host DRAM and NVMe, the KV cache on NVMe, decode attention on the GPU with the cache off
it, and the GPU working on one micro-batch (GPU batch) at a time."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from sextant.catalog import build_cluster, get_model, get_profile
from sextant.cost.inference import kv_cache_bytes_per_token, weight_bytes_per_gpu
from sextant.cost.tiers import tier_rates
from sextant.errors import SpecError
from sextant.serve.deploy import deploy_scenario
from sextant.serve.predict import predict_serve
from sextant.spec.serving import ServeOffload, ServeScenario

BASE = {"model": "opt-30b", "framework": "flexgen-2023",
        "hardware": {"gpu": "t4", "gpus": 1, "node": "gcp-n1-highmem-32-t4"},
        "deployment": {"precision": "fp16"},
        "scheduler": {"max_batch": 16},
        "workload": {"input_len": 256, "output_len": 9, "num_requests": 16},
        "offload": {"weights": "cpu", "kv_cache": "cpu", "micro_batches": 2}}


def scenario(**offload) -> ServeScenario:
    data = json.loads(json.dumps(BASE))
    data["offload"].update(offload)
    return ServeScenario.model_validate(data)


def rates():
    return tier_rates(build_cluster("t4", 1, node="gcp-n1-highmem-32-t4"), get_profile("t4"))


def test_nvme_fraction_splits_the_weights_between_dram_and_the_drives():
    off = deploy_scenario(scenario(nvme_fraction=0.3, resident_fraction=0.1), 265, 256).instance.offload
    weights = weight_bytes_per_gpu(get_model("opt-30b"), deploy_scenario(scenario(), 265, 256).instance.layout)
    assert off.nvme_weight_bytes == pytest.approx(0.3 * weights)
    assert off.host_weight_bytes == pytest.approx(0.6 * weights)


def test_every_weight_on_nvme_is_the_same_whether_said_as_a_fraction_or_a_home():
    as_home = predict_serve(scenario(weights="nvme"))
    as_share = predict_serve(scenario(nvme_fraction=1.0))
    assert as_share.output_tokens_per_s == pytest.approx(as_home.output_tokens_per_s, rel=1e-9)
    assert as_share.binding_resource == as_home.binding_resource == "nvme"


def test_drive_time_per_iteration_is_the_nvme_share_at_the_read_rate():
    half = predict_serve(scenario(nvme_fraction=0.5, kv_cache="gpu", micro_batches=1))
    iterations = 1 + 8  # the prefill and the decode steps after the first token
    weights = weight_bytes_per_gpu(get_model("opt-30b"), deploy_scenario(scenario(), 265, 256).instance.layout)
    assert half.resource_busy_s["nvme"] == pytest.approx(iterations * 0.5 * weights / rates().nvme_read, rel=1e-9)
    # More on the slower tier, never faster.
    more = predict_serve(scenario(nvme_fraction=0.9, kv_cache="gpu", micro_batches=1))
    assert more.output_tokens_per_s < half.output_tokens_per_s


def test_a_cache_on_nvme_is_read_back_every_decode_step_and_lives_on_the_drives():
    on_host = predict_serve(scenario())
    on_nvme = predict_serve(scenario(kv_cache="nvme"))
    assert on_host.resource_busy_s.get("nvme", 0.0) == 0.0
    assert on_nvme.resource_busy_s["nvme"] > 0
    assert on_nvme.output_tokens_per_s <= on_host.output_tokens_per_s  # the reads overlap the weight stream
    assert on_nvme.memory_gb_per_tier["nvme"] > 0 and on_nvme.memory_gb_per_tier["host"] < on_host.memory_gb_per_tier["host"]
    # Reads grow with the context: eight more decode steps read more than eight times the first.
    longer = ServeScenario.model_validate({**json.loads(scenario(kv_cache="nvme").model_dump_json(exclude_unset=True)),
                                           "workload": {"input_len": 256, "output_len": 17, "num_requests": 16}})
    kv_token = kv_cache_bytes_per_token(get_model("opt-30b"), 2.0)
    extra = predict_serve(longer).resource_busy_s["nvme"] - on_nvme.resource_busy_s["nvme"]
    assert extra > 8 * 16 * 256 * kv_token / rates().nvme_read


def test_gpu_attention_over_an_offloaded_cache_moves_the_cache_not_the_work():
    cpu = predict_serve(scenario())
    gpu = predict_serve(scenario(kv_attention="gpu"))
    assert cpu.resource_busy_s["cpu"] > 0
    assert gpu.resource_busy_s.get("cpu", 0.0) == 0.0
    assert gpu.resource_busy_s["host_to_gpu"] > cpu.resource_busy_s["host_to_gpu"]


def test_the_gpu_holds_one_micro_batch_of_activations():
    one = deploy_scenario(scenario(micro_batches=1), 265, 256).instance.activation_bytes_per_gpu
    four = deploy_scenario(scenario(micro_batches=4), 265, 256).instance.activation_bytes_per_gpu
    assert four < one / 2


@pytest.mark.parametrize(("offload", "match"), [
    ({"weights": "nvme", "nvme_fraction": 0.5}, "nvme_fraction splits"),
    ({"weights": "cpu", "resident_fraction": 0.6, "nvme_fraction": 0.5}, "more than all the weights"),
    ({"weights": "cpu", "kv_attention": "gpu"}, "kv_attention chooses"),
])
def test_placements_that_cannot_be_meant_are_refused(offload, match):
    with pytest.raises(ValidationError, match=match):
        ServeOffload.model_validate(offload)


def test_a_cache_on_nvme_needs_drives():
    data = json.loads(json.dumps(BASE))
    data["hardware"] = {"gpu": "gh200", "gpus": 1, "node": "gh200-superchip"}  # LPDDR5X, no drives in the catalog
    data["offload"]["kv_cache"] = "nvme"
    with pytest.raises(SpecError, match="no NVMe drives to hold the KV cache"):
        predict_serve(ServeScenario.model_validate(data))
