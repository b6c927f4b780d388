"""Selective recomputation as each framework runs it: Megatron-LM recomputes the attention core;
TorchTitan's per-op policy recomputes every second matmul of a block and all its element-wise
ops, and keeps the rest. Checked by hand on Llama 3.1 8B and DeepSeek-V3 shapes."""

from __future__ import annotations

import numpy as np
import pytest

from sextant.catalog import get_model
from sextant.cost.flops import alternate_matmul_flops_per_token, step_flops
from sextant.cost.layer import alternate_recomputed_share, matmul_chain
from sextant.cost.memory import layer_activation_bytes, layer_activation_peak_extra
from sextant.spec.scenario import TrainScenario
from sextant.train.predict import predict_train

H, A, G, D, F = 4096, 32, 8, 128, 14336  # Llama 3.1 8B


@pytest.fixture(scope="module")
def llama8b():
    return get_model("llama-3.1-8b")


def test_llama_block_issues_seven_matmuls_and_the_policy_recomputes_k_o_and_up(llama8b):
    # wq, wk, wv, wo, w1 (gate), w3 (up), w2 (down): torchtitan's Attention and FeedForward.
    assert matmul_chain(llama8b, 1) == [(H, A * D), (H, G * D), (H, G * D), (A * D, H), (H, F), (H, F), (F, H)]
    recomputed = G * D + H + F  # outputs of wk, wo, w3 (per input feature H)
    assert alternate_recomputed_share(llama8b, 1) == pytest.approx(recomputed * H / ((2 * H + 2 * G * D + 3 * F) * H))
    # Tensor parallelism splits every matmul: the share stays.
    assert alternate_recomputed_share(llama8b, 4) == pytest.approx(alternate_recomputed_share(llama8b, 1))


def test_mla_chain_shifts_which_mlp_matmuls_are_recomputed():
    """DeepSeek-V3's attention issues five matmuls (q_a, q_b, kv_a, kv_b, o), so its MLP's gate and
    down projections are the even-numbered ones (6th and 8th), unlike a Llama block's up."""
    model = get_model("deepseek-v3")
    m = model.mla
    chain = matmul_chain(model, 1)
    assert len(chain) == 8
    h = model.hidden_size
    assert chain[1] == (m.q_lora_rank, model.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim))
    assert chain[5] == (h, model.ffn_hidden_size) and chain[7] == (model.ffn_hidden_size, h)
    recomputed_flops = sum(2.0 * k * n for k, n in chain[1::2])
    per_token = alternate_matmul_flops_per_token(model)
    dense = model.num_dense_layers * recomputed_flops
    assert per_token > dense  # plus the MoE layers' routers and routed experts, all recomputed


def test_kept_activations_are_the_input_attention_and_odd_matmul_outputs(llama8b):
    b, s, e = 1, 8192, 2.0
    kept = layer_activation_bytes(llama8b, b, s, 1, False, 1, flash=True, dropout=False, selective="alternate_matmuls")
    # block input, attention output, fp32 log-sum-exp, outputs of wq, wv, w1, w2.
    expected = e * s * b * (H + A * D + (A * D + G * D + F + H)) + 4.0 * b * A * s
    assert float(kept) == pytest.approx(expected)
    none = layer_activation_bytes(llama8b, b, s, 1, False, 0, flash=True, dropout=False)
    full = layer_activation_bytes(llama8b, b, s, 1, False, 2, flash=True, dropout=False)
    megatron = layer_activation_bytes(llama8b, b, s, 1, False, 1, flash=True, dropout=False)
    assert full < kept < megatron == none  # with flash, Megatron's selective keeps everything
    extra = layer_activation_peak_extra(llama8b, b, s, 1, False, 1, flash=True, dropout=False,
                                        selective="alternate_matmuls")
    assert float(extra) == pytest.approx(float(none - kept))


def test_hardware_flops_count_the_recomputed_matmuls(llama8b):
    tokens = 8192.0
    rc = np.array([0, 1, 2])
    megatron = step_flops(llama8b, 8192, tokens, rc, flash=True)
    titan = step_flops(llama8b, 8192, tokens, rc, flash=True, selective="alternate_matmuls")
    assert titan.model == megatron.model
    per_layer = 2.0 * H * (G * D + H + F)
    assert titan.hardware[1] - titan.model == pytest.approx(tokens * llama8b.num_layers * per_layer)
    assert titan.hardware[0] == megatron.hardware[0] and titan.hardware[2] == megatron.hardware[2]
    assert titan.executed[1] > megatron.executed[1]


def _scenario(framework: str, recompute: str) -> TrainScenario:
    return TrainScenario.model_validate({
        "model": "llama-3.1-8b", "framework": framework,
        "hardware": {"gpu": "h100-sxm", "gpus": 8},
        "strategy": {"dp": 8, "zero": 3, "micro_batch": 1, "recompute": recompute},
        "workload": {"global_batch": 8, "seq_len": 8192},
    })


def test_a_torchtitan_run_recomputes_more_and_keeps_less_than_megatrons_selective():
    titan = predict_train(_scenario("torchtitan-2024", "selective"))
    megatron = predict_train(_scenario("megatron-core-2024", "selective"))
    none = predict_train(_scenario("torchtitan-2024", "none"))
    assert titan.time_breakdown_s["recompute"] > 2 * megatron.time_breakdown_s["recompute"]
    assert titan.memory_gb_per_gpu["activations"] < none.memory_gb_per_gpu["activations"]
    assert titan.hfu > titan.mfu
    assert any("per-op policy" in a for a in titan.assumptions)
    assert not any("per-op policy" in a for a in megatron.assumptions)


def test_mla_up_projection_recompute_keeps_the_latents_not_the_expanded_heads() -> None:
    """Megatron-Core's mla_up_proj: MLA's expanded queries, keys and values are not kept, and
    their up-projections run again in the backward; a model without MLA recomputes nothing."""
    from sextant.cost.layer import mla_up_proj_share

    ds, llama = get_model("deepseek-v3"), get_model("llama-3.1-8b")
    kw = dict(flash=True, dropout=False)
    none = float(layer_activation_bytes(ds, 1, 4096, 2, True, 0, **kw))
    up = float(layer_activation_bytes(ds, 1, 4096, 2, True, 1, selective="mla_up_proj", **kw))
    qk = ds.mla.qk_nope_head_dim + ds.mla.qk_rope_head_dim
    expanded = 2.0 * 4096 * ds.num_heads * (2 * qk + ds.mla.v_head_dim) / 2
    assert none - up == pytest.approx(expanded)
    assert float(layer_activation_bytes(llama, 1, 4096, 1, False, 1, selective="mla_up_proj", **kw)) == \
        pytest.approx(float(layer_activation_bytes(llama, 1, 4096, 1, False, 0, **kw)))
    assert 0.0 < mla_up_proj_share(ds, 2) < 1.0 and mla_up_proj_share(llama, 1) == 0.0
    assert np.isfinite(none)
