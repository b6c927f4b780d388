"""Hand-checkable unit tests of the cost formulas on made-up round numbers: collectives
(alpha-beta), the GEMM roofline, pipeline stages and schedule, activation memory against
Korthikanti et al. 2022, model-state memory against the ZeRO paper, and model FLOPs."""

from __future__ import annotations

import numpy as np
import pytest

from sextant.catalog import get_model
from sextant.cost import comm
from sextant.cost.compute import gemm_efficiency, gemm_time, memory_bound_time
from sextant.cost.memory import layer_activation_bytes, model_state_bytes
from sextant.cost.params import count_params, model_flops_per_token
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile
from sextant.train.pipeline import schedule_time, stage_layers

GB = 1e9


def fabric(intra_bw=100 * GB, inter_bw=10 * GB, intra_lat=0.0, inter_lat=0.0, gpus_per_node=8) -> comm.Fabric:
    return comm.Fabric(intra_bw=intra_bw, intra_latency=intra_lat, inter_bw=inter_bw, inter_latency=inter_lat,
                       gpus_per_node=gpus_per_node)


# ---- collectives ---------------------------------------------------------------------------------

def test_ring_all_reduce():
    # 2 (n-1)/n * bytes / bw + 2 (n-1) latency
    assert comm.ring_all_reduce(1e9, 4, 1e9, 0.0) == pytest.approx(1.5)
    assert comm.ring_all_reduce(1e9, 4, 1e9, 1e-3) == pytest.approx(1.5 + 6e-3)
    assert comm.ring_all_reduce(1e9, 2, 1e9, 0.0) == pytest.approx(1.0)


def test_ring_all_gather():
    # (n-1)/n * bytes / bw + (n-1) latency; also the reduce-scatter time
    assert comm.ring_all_gather(1e9, 4, 1e9, 0.0) == pytest.approx(0.75)
    assert comm.ring_all_gather(1e9, 4, 1e9, 1e-3) == pytest.approx(0.75 + 3e-3)


def test_tree_all_reduce():
    assert comm.tree_all_reduce(1e9, 8, 1e9, 1e-3) == pytest.approx(2.0 + 2 * 3 * 1e-3)


@pytest.mark.parametrize("fn", [comm.ring_all_reduce, comm.ring_all_gather, comm.tree_all_reduce])
def test_single_rank_costs_nothing(fn):
    assert fn(1e9, 1, 1e9, 1e-3) == 0.0


def test_group_of_one_costs_nothing():
    fab = fabric(intra_lat=1e-6, inter_lat=5e-6)
    assert comm.all_reduce(1e9, 1, 1, fab) == 0.0
    assert comm.all_gather(1e9, 1, 1, fab) == 0.0
    assert comm.all_to_all(1e9, 1, 1, fab) == 0.0


def test_all_reduce_picks_faster_of_ring_and_tree():
    # Large buffer, no latency: ring 2*7/8 = 1.75 s beats tree 2 s.
    fab = fabric(intra_bw=1e9)
    assert comm.all_reduce(1e9, 8, 8, fab) == pytest.approx(1.75)
    # Tiny buffer, 1 ms per step: ring 14 steps, tree 2*log2(8) = 6 steps.
    fab = fabric(intra_bw=1e9, intra_lat=1e-3)
    assert comm.all_reduce(1e3, 8, 8, fab) == pytest.approx(2e3 / 1e9 + 6e-3)
    ring = comm.ring_all_reduce(1e3, 8, 1e9, 1e-3)
    assert ring == pytest.approx(1.75e-6 + 14e-3)


def test_hierarchical_vs_flat_two_nodes():
    # 16 ranks, 8 per node: intra 100 GB/s, inter 10 GB/s per GPU, no latency, 80 GB buffer.
    fab = fabric()
    b = 80 * GB
    # hierarchical all-reduce: intra reduce-scatter + all-gather 2 * 7/8 * 80/100 = 1.4 s,
    # inter all-reduce of 80/8 = 10 GB over 2 nodes at 10 GB/s: 2 * 1/2 * 10/10 = 1 s.
    assert comm.all_reduce(b, 16, 8, fab) == pytest.approx(2.4)
    # flat ring over 16 ranks bounded by the NIC: 2 * 15/16 * 80/10 = 15 s.
    assert comm.all_reduce(b, 16, 8, fab, flat=True) == pytest.approx(15.0)
    # all-gather: inter 1/2 * 10/10 = 0.5 s + intra 7/8 * 0.8 = 0.7 s; flat 15/16 * 8 = 7.5 s.
    assert comm.all_gather(b, 16, 8, fab) == pytest.approx(1.2)
    assert comm.all_gather(b, 16, 8, fab, flat=True) == pytest.approx(7.5)


def test_all_to_all_and_p2p():
    fab = fabric(intra_bw=1e9, inter_bw=1e8)
    # 8 ranks in one node: 7/8 of 8 GB crosses NVLink at 1 GB/s.
    assert comm.all_to_all(8e9, 8, 8, fab) == pytest.approx(7.0)
    # 16 ranks over 2 nodes: 8/16 of 8 GB leaves over the NIC (40 s), 7/16 over NVLink (3.5 s).
    assert comm.all_to_all(8e9, 16, 8, fab) == pytest.approx(40.0)
    assert comm.p2p(1e9, False, fab) == pytest.approx(1.0)
    assert comm.p2p(1e9, True, fab) == pytest.approx(10.0)


# ---- GEMM roofline ------------------------------------------------------------------------------

def profile(**overrides) -> HardwareProfile:
    values = dict(name="unit", gpu="unit-gpu", provenance="made-up numbers", gemm_max_efficiency=1.0,
                  gemm_half_dim=0.0, flash_attention_efficiency=1.0, unfused_attention_gemm_efficiency=1.0,
                  memory_bw_efficiency=1.0, kernel_overhead_s=1e-5, intra_node_bw_efficiency=1.0,
                  network_bw_efficiency=1.0)
    return HardwareProfile(**{**values, **overrides})


PEAK, BW = 1e15, 1e12  # 1 PFLOP/s, 1 TB/s


def test_gemm_large_square_is_compute_bound():
    p = profile()
    # 2 * 1e4^3 = 2e12 FLOPs / 1e15 = 2 ms; traffic 2 * 3e8 bytes / 1e12 = 0.6 ms.
    t = gemm_time(1e4, 1e4, 1e4, peak_flops=PEAK, mem_bw=BW, bytes_per_element=2.0, profile=p)
    assert t == pytest.approx(2e-3 + 1e-5, rel=1e-12)
    t3 = gemm_time(1e4, 1e4, 1e4, peak_flops=PEAK, mem_bw=BW, bytes_per_element=2.0, profile=p, count=3)
    assert t3 == pytest.approx(3 * (2e-3 + 1e-5), rel=1e-12)


def test_gemm_skinny_is_memory_bound():
    p = profile()
    # m = 1: 2e8 FLOPs = 0.2 us of compute, but the 1e4 x 1e4 weight alone is 2e8 bytes = 200 us.
    t = gemm_time(1, 1e4, 1e4, peak_flops=PEAK, mem_bw=BW, bytes_per_element=2.0, profile=p)
    traffic = 2.0 * (1e4 + 1e8 + 1e4)
    assert t == pytest.approx(traffic / BW + 1e-5, rel=1e-12)
    # Halving the achieved bandwidth doubles the memory-bound part only.
    t_half = gemm_time(1, 1e4, 1e4, peak_flops=PEAK, mem_bw=BW, bytes_per_element=2.0,
                       profile=profile(memory_bw_efficiency=0.5))
    assert t_half == pytest.approx(2 * traffic / BW + 1e-5, rel=1e-12)


def test_gemm_efficiency_shape_factor():
    p = profile(gemm_max_efficiency=0.8, gemm_half_dim=128.0)
    # each dimension of 128 reaches half the large-shape efficiency: 0.8 / 8
    assert gemm_efficiency(128, 128, 128, p) == pytest.approx(0.1)
    assert gemm_efficiency(384, 128, 1e12, p) == pytest.approx(0.8 * 0.75 * 0.5, rel=1e-9)


def test_memory_bound_time():
    p = profile(memory_bw_efficiency=0.5)
    assert memory_bound_time(1e12, mem_bw=BW, profile=p, kernels=4) == pytest.approx(2.0 + 4e-5)


# ---- pipeline -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, pp, expected", [
    (126, 16, (7, 8, 7)),  # Llama 3 405B: one layer fewer on the first and last stage
    (96, 8, (12, 12, 12)),
    (10, 1, (10, 0, 10)),  # one stage is both first and last; no middle stage
    (10, 2, (5, 0, 5)),
    (32, 32, (1, 1, 1)),
])
def test_stage_layers(layers, pp, expected):
    assert tuple(float(x) for x in stage_layers(layers, pp)) == expected


def test_stage_layers_broadcasts():
    first, mid, last = stage_layers(96, np.array([1, 2, 4, 8]))
    np.testing.assert_array_equal(first, [96, 48, 24, 12])
    np.testing.assert_array_equal(mid, [0, 0, 24, 12])
    np.testing.assert_array_equal(last, [96, 48, 24, 12])


@pytest.mark.parametrize("layers", [10, 32, 80])
def test_stage_layers_cover_all_layers_non_negatively(layers):
    """``mid`` is the fullest middle stage: the middle stages hold the rest, each mid or mid - 1,
    and every stage holds at least one layer while pp <= layers."""
    for pp in range(2, layers + 1):
        first, mid, last = (float(x) for x in stage_layers(layers, pp))
        assert min(first, last) >= 1, (layers, pp, first, mid, last)
        middle_total = layers - first - last
        if pp == 2:
            assert middle_total == 0 and mid == 0
        else:
            assert (pp - 2) * (mid - 1) < middle_total <= (pp - 2) * mid, (layers, pp, first, mid, last)
            assert max(first, last) <= mid, "the first and last stage never hold more than a middle one"


@pytest.mark.parametrize("m, p, v", [(8, 4, 1), (16, 8, 2), (1, 1, 1), (64, 16, 8)])
def test_schedule_time_equal_stages(m, p, v):
    t = 0.25
    assert schedule_time(t, p * t, m, v) == pytest.approx((m + (p - 1) / v) * t)


# ---- activation memory: Korthikanti et al. 2022 -------------------------------------------------

GPT = ModelSpec(name="gpt-unit", source="made up", hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=16,
                head_dim=64, ffn_hidden_size=4096, vocab_size=1000, mlp="gelu", norm="layernorm",
                position_embedding="learned")
S, B, H, A = 2048, 4, 1024, 16


def act(t=1, sp=False, recompute=0):
    return float(layer_activation_bytes(GPT, B, S, t, sp, recompute, flash=False, dropout=True))


def test_korthikanti_eq1_no_parallelism():
    assert act() == pytest.approx(S * B * H * (34 + 5 * A * S / H), rel=1e-12)


@pytest.mark.parametrize("t", [2, 4, 8])
def test_korthikanti_eq2_tensor_parallel(t):
    assert act(t) == pytest.approx(S * B * H * (10 + 24 / t + 5 * A * S / (H * t)), rel=1e-12)


@pytest.mark.parametrize("t", [2, 4, 8])
def test_korthikanti_eq4_sequence_parallel(t):
    assert act(t, sp=True) == pytest.approx(S * B * H / t * (34 + 5 * A * S / H), rel=1e-12)


@pytest.mark.parametrize("t", [2, 8])
def test_korthikanti_selective_recompute_with_sp(t):
    assert act(t, sp=True, recompute=1) == pytest.approx(S * B * H * 34 / t, rel=1e-12)


def test_korthikanti_full_recompute():
    assert act(recompute=2) == pytest.approx(2 * S * B * H, rel=1e-12)
    assert act(4, recompute=2) == pytest.approx(2 * S * B * H, rel=1e-12)  # input replicated without SP


# ---- model states: ZeRO paper figure 1 ----------------------------------------------------------

PSI, ND = 7.5e9, 64


def test_model_states_adam_mixed_precision_16_bytes():
    w, g, o = model_state_bytes(1.0, 1, 0, "fp16", "adam")
    assert (float(w), float(g), float(o)) == (2.0, 2.0, 12.0)


@pytest.mark.parametrize("zero, exact, published_gb", [
    (0, 16 * PSI, 120.0),
    (1, 4 * PSI + 12 * PSI / ND, 31.4),
    (2, 2 * PSI + 14 * PSI / ND, 16.6),
    (3, 16 * PSI / ND, 1.9),
])
def test_zero_paper_figure1(zero, exact, published_gb):
    total = float(sum(model_state_bytes(PSI, ND, zero, "fp16", "adam")))
    assert total == pytest.approx(exact, rel=1e-12)
    assert total / GB == pytest.approx(published_gb, rel=0.02)  # the paper rounds to 3 digits


# ---- model FLOPs ---------------------------------------------------------------------------------

def test_model_flops_per_token_gpt():
    s, h, L, V = 2048, 1024, 4, 1000
    # matmul parameters: attention 4h^2 + MLP 8h^2 per layer (no biases); the code also counts the
    # two LayerNorms (4h per layer) as layer parameters; the logits projection V*h.
    layer_params = 12 * h * h + 4 * h
    assert count_params(GPT).layers_active == L * layer_params
    expected = 6 * (L * layer_params + V * h) + 12 * L * h * s
    assert model_flops_per_token(GPT, s) == pytest.approx(expected, rel=1e-12)


def test_megatron_formula_gpt_175b():
    m = get_model("gpt-sc21-175b")
    B, s, n_layers, h, V = 1536, 2048, m.num_layers, m.hidden_size, m.vocab_size
    megatron = 72 * B * s * n_layers * h**2 * (1 + s / (6 * h) + V / (12 * n_layers * h))
    assert model_flops_per_token(m, s) * B * s == pytest.approx(megatron, rel=0.005)


def test_megatron_fp16_optimizer_keeps_fp32_gradients():
    """Megatron-LM's distributed-optimizer table: fp16 params and grads cost 4 + 16/d bytes."""
    d = 8
    w, g, o = model_state_bytes(1.0, d, 1, "fp16", "adam", fp32_grad_copy=True)
    assert float(w + g) == 4.0 and float(o) == 16.0 / d
    w, g, o = model_state_bytes(1.0, d, 1, "bf16", "adam", fp32_grad_copy=True)  # 6 + 12/d
    assert float(w + g) == 6.0 and float(o) == 12.0 / d
