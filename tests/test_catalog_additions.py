"""Today's models and GPUs (issue 27): config.json files of Qwen3, Gemma 2, Phi-3, Llama 4 and
gpt-oss import with the published parameter counts, and the new GPUs resolve with their nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sextant.catalog import build_cluster, get_gpu, get_profile
from sextant.catalog.hf_config import model_from_hf_config
from sextant.cost.params import count_params
from sextant.spec.scenario import TrainScenario
from sextant.train.predict import predict_train

CONFIGS = Path(__file__).parent / "data" / "hf_configs"

#: file -> (published total, published active or None); tests/data/hf_configs/README.md cites each.
PUBLISHED = {
    "qwen3-8b.json": (8_190_735_360, None),
    "gemma-2-9b.json": (9_241_705_984, None),
    "phi-3-mini-4k.json": (3_821_079_552, None),
    # 109B in all, less the ~0.87B vision encoder, which is not counted.
    "llama-4-scout.json": (109e9 - 0.87e9, 17e9),
    "gpt-oss-20b.json": (20.9e9, None),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_config_json_imports_with_the_published_parameter_count(name):
    model = model_from_hf_config(CONFIGS / name)
    counted = count_params(model)
    total, active = PUBLISHED[name]
    assert counted.total == pytest.approx(total, rel=0.01), f"{counted.total:,} vs {total:,.0f}"
    if active is not None:
        assert counted.active == pytest.approx(active, rel=0.02), f"{counted.active:,} vs {active:,.0f}"


def test_each_architecture_is_read_as_its_source_builds_it():
    gemma = model_from_hf_config(CONFIGS / "gemma-2-9b.json")
    assert gemma.mlp == "geglu" and gemma.tie_embeddings and gemma.head_dim == 256
    scout = model_from_hf_config(CONFIGS / "llama-4-scout.json")
    assert scout.moe.num_experts == 16 and scout.moe.top_k == 1 and scout.moe.num_shared_experts == 1
    assert scout.num_moe_layers == 48  # interleave_moe_layer_step 1: every layer
    oss = model_from_hf_config(CONFIGS / "gpt-oss-20b.json")
    assert oss.moe.num_experts == 32 and oss.moe.top_k == 4 and oss.qkv_bias
    # An active count in OpenAI's convention (without the input embedding table) is 3.6B.
    embedding = oss.vocab_size * oss.hidden_size
    assert count_params(oss).active - embedding == pytest.approx(3.6e9, rel=0.01)


@pytest.mark.parametrize("gpu", ["gb200", "b300", "h20", "mi325x", "mi355x"])
def test_the_new_gpus_resolve_with_their_nodes_and_say_their_profile_is_unfitted(gpu):
    spec = get_gpu(gpu)
    assert spec.peak("bf16") > 0 and spec.memory.capacity_bytes > 0
    assert not get_profile(gpu).fitted
    cluster = build_cluster(gpu, 8)
    assert cluster.gpu.name == gpu and cluster.num_gpus == 8
    result = predict_train(TrainScenario.model_validate(
        {"model": "llama-3.1-8b", "hardware": {"gpu": gpu, "gpus": 8}}))
    assert result.step_time_s > 0 and not result.profile_fitted


def test_gb200_nvl72_is_one_72_gpu_nvlink_domain():
    cluster = build_cluster("gb200", 144)
    assert cluster.gpus_per_node == 72 and cluster.num_gpus // cluster.gpus_per_node == 2
    assert cluster.node.intra_node_link.bandwidth_bytes_per_s == 900e9


def test_fp4_serving_runs_where_the_gpu_has_fp4_tensor_cores():
    from sextant.errors import SpecError
    from sextant.serve.predict import predict_serve
    from sextant.spec.serving import ServeScenario

    def serve(gpu, precision):
        return predict_serve(ServeScenario.model_validate({
            "model": "llama-3.1-70b", "hardware": {"gpu": gpu, "gpus": 4},
            "deployment": {"tp": 4, "precision": precision}, "workload": {"num_requests": 32}}))

    fp4, fp8 = serve("b200", "fp4"), serve("b200", "fp8")
    # NVFP4 stores 0.5 + 1/16 bytes per decoder weight, 0.5625 of FP8's; the embedding and the
    # output head stay in 16 bits in both, so the whole is a little above that ratio.
    ratio = fp4.memory_gb_per_gpu["weights"] / fp8.memory_gb_per_gpu["weights"]
    assert 0.5625 < ratio < 0.6
    assert fp4.output_tokens_per_s > fp8.output_tokens_per_s and fp4.kv_precision == "fp8"
    assert any("NVFP4" in a for a in fp4.assumptions)
    with pytest.raises(SpecError, match="no fp4 tensor cores"):
        serve("h100-sxm", "fp4")
