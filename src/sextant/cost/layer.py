"""Lowering of one transformer layer to kernels: GEMMs, attention, element-wise ops.

Shapes are per GPU for a micro-batch of ``b`` sequences whose local length is ``s`` (the full
length divided by context parallelism), with tensor parallelism ``t`` splitting heads and the
MLP intermediate dimension as in Megatron-LM (Shoeybi et al. 2019, section 3). With sequence
parallelism (Korthikanti et al. 2022, section 4.2.2) norms, dropout and residual adds also run on
1/t of the tokens.

Backward costs: each GEMM's backward is two GEMMs of the same FLOPs (input and weight gradients);
FlashAttention's backward runs 5 matmuls against the forward's 2 (Dao 2023, FlashAttention-2,
algorithm 2), i.e. 2.5x the forward FLOPs; element-wise backward kernels move about twice the
forward bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sextant.cost.compute import gemm_efficiency, gemm_time, memory_bound_time
from sextant.cost.params import attention_qk_dim, attention_v_dim
from sextant.cost.precision import dtype_scale
from sextant.spec.hardware import GPUSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import EfficiencyTable, HardwareProfile

#: FlashAttention backward FLOPs relative to forward (5 matmuls vs 2).
FLASH_BWD_FLOP_RATIO = 2.5
#: Bytes the cross-entropy kernels move per fp32 logit, forward or backward: read the logits,
#: write the softmax, read it again for the loss (or its gradient).
LOSS_BYTES_PER_LOGIT = 12.0
#: Fraction of the s_q x s_kv score matrix a causal mask leaves to compute (block skipping).
CAUSAL_FRACTION = 0.5


@dataclass(frozen=True)
class Device:
    """What the lowering needs of a GPU: peaks for the precision at hand and HBM bandwidth."""

    gemm_peak: float  # FLOP/s for the training precision (fp8 GEMMs under Transformer Engine)
    attention_peak: float  # FLOP/s for attention (bf16/fp16)
    mem_bw: float  # bytes/s
    gemm_bytes: float  # bytes per GEMM operand element
    profile: HardwareProfile
    act_bytes: float = 2.0  # bytes per activation element (16-bit in mixed precision)
    gemm_table: EfficiencyTable | None = None  # measured efficiencies for the GEMM dtype, if calibrated
    attention_table: EfficiencyTable | None = None  # measured fused-attention efficiencies, if calibrated
    host_synchronous: bool = False  # the device is the host CPU: it issues and runs every op in turn
    #: Achieved GEMM efficiency of this dtype relative to the profile's curve (the profile's
    #: ``gemm_dtype_efficiency``; 1 where the curve or a measured table already describes it).
    gemm_scale: float = 1.0
    #: Bytes per weight element where weights are stored narrower than the GEMM operands
    #: (weight-only quantization; FP8/INT8 W8A8 weights have the operand width).
    weight_bytes: float | None = None
    #: Weight-only quantization: FLOP/s of the vector units that dequantize each weight once per
    #: tile of activation rows (0: no dequantization).
    dequant_flops: float = 0.0


def device_for(gpu: GPUSpec, profile: HardwareProfile, gemm_dtype: str, attention_dtype: str, *,  # noqa: PLR0913
               gemm_bytes: float, act_bytes: float, weight_bytes: float | None = None,
               dequant_flops: float = 0.0, training: bool = False) -> Device:
    """The device a workload's kernels see on ``gpu``: GEMMs at the peak of ``gemm_dtype``,
    attention at that of ``attention_dtype``, each with the profile's measured table for its
    dtype where calibrated (else the profile's curve, scaled by its ``gemm_dtype_efficiency``, or
    in ``training`` by its ``training_gemm_dtype_efficiency`` where it states the dtype; a dtype
    the profile does not state takes its wider neighbour's scale, ``precision.SCALE_FALLBACK``)."""
    table = profile.gemm_tables.get(gemm_dtype)
    scales = profile.gemm_dtype_efficiency
    if training and gemm_dtype in profile.training_gemm_dtype_efficiency:
        scales = profile.training_gemm_dtype_efficiency
    return Device(
        gemm_peak=gpu.peak(gemm_dtype),
        attention_peak=gpu.peak(attention_dtype),
        mem_bw=gpu.memory.read_bytes_per_s,
        gemm_bytes=gemm_bytes,
        profile=profile,
        act_bytes=act_bytes,
        gemm_table=table,
        attention_table=profile.attention_tables.get(attention_dtype),
        host_synchronous=gpu.architecture.startswith("cpu"),
        gemm_scale=1.0 if table is not None else dtype_scale(scales, gemm_dtype),
        weight_bytes=weight_bytes,
        dequant_flops=dequant_flops,
    )


@dataclass
class PassTimes:
    """Seconds per micro-batch for one layer, by kind of work; each field an array."""

    gemm: np.ndarray
    attention: np.ndarray
    elementwise: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.gemm + self.attention + self.elementwise


@dataclass
class LayerCost:
    """Forward and backward time of one layer, recomputation costs, and its FLOPs."""

    fwd: PassTimes
    bwd: PassTimes
    #: Forward time of the attention core alone (what selective recomputation re-runs).
    attention_core_fwd: np.ndarray
    flops_fwd: np.ndarray = field(default_factory=lambda: np.zeros(1))
    #: Forward time that TorchTitan's per-op selective checkpointing re-runs: every second matmul
    #: and all element-wise work (see :data:`SELECTIVE_RECOMPUTE`).
    alternate_matmuls_fwd: np.ndarray = field(default_factory=lambda: np.zeros(1))
    #: Forward time of MLA's up-projections (queries and keys/values from their latents), what
    #: Megatron-Core's ``mla_up_proj`` recomputation re-runs; zero without MLA.
    mla_up_proj_fwd: np.ndarray = field(default_factory=lambda: np.zeros(1))

    def selective_recompute_fwd(self, policy: str) -> np.ndarray:
        """Forward seconds the selective recomputation ``policy`` re-runs in the backward."""
        return {ALTERNATE_MATMULS: self.alternate_matmuls_fwd,
                MLA_UP_PROJ: self.mla_up_proj_fwd}.get(policy, self.attention_core_fwd)


#: Selective recomputation policies (a framework preset's ``strategy.selective_recompute``).
#: ``attention_core``: Megatron-LM's (Korthikanti et al. 2022, section 5; ``--recompute-granularity
#: selective``): the attention core is recomputed, every other activation kept.
#: ``alternate_matmuls``: TorchTitan's per-op selective activation checkpointing
#: (torchtitan/distributed/activation_checkpoint.py, ``SelectiveAC``; ``selective_ac_option = "op"``
#: in 2024-2025 releases): the block's forward runs again in the backward, with the outputs of
#: the attention kernel, of communication ops and of every odd-numbered ``aten.mm`` of the block
#: (1st, 3rd, ...) taken from what the forward saved; every second matmul and all element-wise
#: ops are recomputed. The MoE router's matmul is always recomputed and its routed experts' grouped
#: GEMMs (``aten._grouped_mm``) are not in the save list, so they are recomputed as well.
#: ``mla_up_proj``: Megatron-Core's ``--recompute-modules mla_up_proj`` (multi-latent attention):
#: the up-projections of the query and key/value latents (and their rotary embedding) run again
#: in the backward, so the expanded queries, keys and values are not kept; the latents are.
ATTENTION_CORE, ALTERNATE_MATMULS, MLA_UP_PROJ = "attention_core", "alternate_matmuls", "mla_up_proj"
SELECTIVE_RECOMPUTE = (ATTENTION_CORE, ALTERNATE_MATMULS, MLA_UP_PROJ)


def matmul_chain(model: ModelSpec, t, *, moe_layer: bool = False) -> list[tuple]:
    """The ``aten.mm`` calls of one layer's forward per GPU, in the order a PyTorch-native block
    issues them, as (input features, output features): the attention projections unfused
    (:func:`attention_matmuls`), then the MLP's gate, up and down (:func:`mlp_matmuls`), or in a
    mixture-of-experts layer its shared experts' (the router and the routed experts' grouped GEMMs
    are not plain matmuls)."""
    if moe_layer and model.moe is not None:
        ffn = model.moe.shared_expert_ffn_hidden_size * model.moe.num_shared_experts
    else:
        ffn = model.ffn_hidden_size
    mlp = mlp_matmuls(model, ffn, t, fused=False) if ffn else []
    return attention_matmuls(model, t, fused=False) + mlp


def mla_up_proj_share(model: ModelSpec, t, *, fused: bool = True):
    """The share of the attention projections' FLOPs (:func:`attention_matmuls`) in MLA's
    up-projections: the query's from its latent and the keys' and values' from theirs; zero
    without MLA."""
    if model.mla is None:
        return 0.0
    m, a = model.mla, model.num_heads
    up = (m.q_lora_rank * a * (m.qk_nope_head_dim + m.qk_rope_head_dim) / t
          + m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim) / t)
    return up / sum(np.asarray(k, float) * n for k, n in attention_matmuls(model, t, fused=fused))


def alternate_recomputed_share(model: ModelSpec, t, *, moe_layer: bool = False):
    """The share of a layer's :func:`matmul_chain` FLOPs that :data:`ALTERNATE_MATMULS`
    recomputes: those of its even-numbered matmuls (the policy counts them from one)."""
    chain = matmul_chain(model, t, moe_layer=moe_layer)
    work = [np.asarray(k, float) * n for k, n in chain]
    return sum(work[1::2]) / sum(work)


#: Rows of activations per dequantized weight tile in weight-only-quantized GEMMs (Marlin's
#: 64-row blocks) and vector operations per 4-bit weight (unpack, subtract zero point, scale);
#: Frantar et al. 2024, "MARLIN: Mixed-Precision Auto-Regressive Parallel Inference".
DEQUANT_TILE_ROWS = 64.0
DEQUANT_OPS_PER_WEIGHT = 4.0


def device_gemm(m, n, k, dev: Device, count=1.0, *, efficiency_rows=None, launches=None) -> np.ndarray:
    """Seconds of ``count`` GEMMs on the device (:func:`sextant.cost.compute.gemm_time` at the
    precision's peak; weight-only quantization dequantizes each weight once per tile of rows)."""
    peak = dev.gemm_peak * dev.gemm_scale
    if dev.dequant_flops:
        # Dequantization runs on the vector units beside the tensor-core math: it lowers the
        # effective peak by the ratio of the two times.
        m_ = np.asarray(m, float)
        eff = gemm_efficiency(m if efficiency_rows is None else efficiency_rows, n, k, dev.profile, dev.gemm_table)
        tensor_s = 2.0 * m_ / (peak * eff)
        dequant_s = np.ceil(m_ / DEQUANT_TILE_ROWS) * DEQUANT_OPS_PER_WEIGHT / dev.dequant_flops
        peak = peak * tensor_s / (tensor_s + dequant_s)
    return gemm_time(m, n, k, peak_flops=peak, mem_bw=dev.mem_bw,
                     bytes_per_element=dev.gemm_bytes, profile=dev.profile, count=count, table=dev.gemm_table,
                     weight_bytes_per_element=dev.weight_bytes, efficiency_rows=efficiency_rows, launches=launches)


def grouped_gemm(rows, groups, n, k, dev: Device) -> np.ndarray:
    """Seconds of one grouped GEMM: ``groups`` weight matrices (k x n) and ``rows`` rows in all,
    spread evenly over them, in one kernel (the experts of an MoE layer: vLLM's and SGLang's
    fused_moe, TensorRT-LLM's MoE GEMM, MegaBlocks' block-sparse GEMM, Gale et al. 2023): the
    ``groups`` GEMMs of :func:`device_gemm` in one launch, at the tile efficiency of the stacked
    rows (the groups' thread blocks fill the GPU together); every group's weights read once."""
    rows = np.asarray(rows, float)
    return device_gemm(rows / groups, n, k, dev, count=groups, efficiency_rows=rows, launches=1.0)


def _attention_core(model: ModelSpec, b, s_q, s_kv, t, dev: Device, *, flash: bool, dropout: bool):
    """Forward and backward seconds of softmax(QK^T)V for one layer, and its forward FLOPs.

    Flash: one fused kernel, causal block skipping (CAUSAL_FRACTION of the scores), no s^2
    traffic. Unfused (Megatron-LM 2021): two batched GEMMs that materialize the full score
    matrix, a fused scale-mask-softmax kernel and attention dropout, each moving the scores.
    """
    p = dev.profile
    heads = model.num_heads / t
    dqk, dv = attention_qk_dim(model), attention_v_dim(model)
    if flash:
        flops_fwd = 2.0 * b * heads * s_q * s_kv * (dqk + dv) * CAUSAL_FRACTION
        eff = p.flash_attention_efficiency if dev.attention_table is None else dev.attention_table.interpolate(s_kv, dqk)
        fwd = flops_fwd / (dev.attention_peak * eff) + p.kernel_overhead_s
        bwd = FLASH_BWD_FLOP_RATIO * flops_fwd / (dev.attention_peak * eff) + 2 * p.kernel_overhead_s
        return fwd, bwd, flops_fwd
    flops_fwd = 2.0 * b * heads * s_q * s_kv * (dqk + dv)
    gemm = flops_fwd / (dev.attention_peak * p.unfused_attention_gemm_efficiency)
    scores = b * heads * s_q * s_kv  # elements
    # scale-mask-softmax: read + write scores; dropout: read, write, write a 1-byte mask.
    softmax_bytes = 2 * dev.act_bytes * scores
    dropout_bytes = (2 * dev.act_bytes + 1) * scores if dropout else 0.0
    ew_fwd = memory_bound_time(softmax_bytes + dropout_bytes, mem_bw=dev.mem_bw, profile=p, kernels=2)
    fwd = gemm + ew_fwd + 2 * p.kernel_overhead_s
    bwd = 2.0 * gemm + 2.0 * ew_fwd + 4 * p.kernel_overhead_s
    return fwd, bwd, flops_fwd


def attention_matmuls(model: ModelSpec, t, *, fused: bool = True) -> list[tuple]:
    """The attention projections' GEMMs per GPU as (input features, output features), in the
    order they run: one fused QKV GEMM (Megatron-Core's ``linear_qkv``, vLLM's ``QKVParallelLinear``)
    or q, k and v apart (TorchTitan's ``wq``/``wk``/``wv``, Hugging Face's ``q_proj``/``k_proj``/
    ``v_proj``), then the output projection; MLA's low-rank chain (q_a, q_b, kv_a, kv_b, o) is
    never fused. Column-parallel GEMMs split their outputs over the ``t`` tensor-parallel ranks,
    row-parallel ones their inputs; MLA's down-projections are replicated."""
    h, a = model.hidden_size, model.num_heads
    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        chain = [(h, m.q_lora_rank), (m.q_lora_rank, a * qk / t)] if m.q_lora_rank else [(h, a * qk / t)]
        return chain + [(h, m.kv_lora_rank + m.qk_rope_head_dim),
                        (m.kv_lora_rank, a * (m.qk_nope_head_dim + m.v_head_dim) / t),
                        (a * m.v_head_dim / t, h)]
    g, dqk, dv = model.num_kv_heads, attention_qk_dim(model), attention_v_dim(model)
    qkv = [(h, (a * dqk + g * dqk + g * dv) / t)] if fused else [(h, a * dqk / t), (h, g * dqk / t), (h, g * dv / t)]
    return qkv + [(a * dv / t, h)]


def mlp_matmuls(model: ModelSpec, ffn, t, *, fused: bool = True) -> list[tuple]:
    """An MLP's GEMMs per GPU as (input features, output features), in order: gate and up fused
    into one GEMM (Megatron-Core's ``linear_fc1``) or apart (TorchTitan's ``w1``/``w3``), or the
    single up projection of an ungated MLP; then the down projection."""
    h = model.hidden_size
    if not model.gated_mlp:
        up = [(h, ffn / t)]
    else:
        up = [(h, 2 * ffn / t)] if fused else [(h, ffn / t), (h, ffn / t)]
    return up + [(ffn / t, h)]


def _gemms(shapes: list[tuple], rows, dev: Device, count=1.0):
    """Forward seconds and FLOPs of ``count`` sets of GEMMs of ``shapes`` on ``rows`` rows each."""
    time = sum(device_gemm(rows, n, k, dev, count) for k, n in shapes)
    flops = count * 2.0 * np.asarray(rows, float) * sum(k * n for k, n in shapes)
    return time, flops


def _mlp_gemms(model: ModelSpec, tokens, ffn, t, dev: Device, count=1.0, *, fused: bool = True):
    """Forward seconds and FLOPs of one MLP (up[, gate], down) on ``tokens`` rows."""
    return _gemms(mlp_matmuls(model, ffn, t, fused=fused), tokens, dev, count)


def _attention_projections(model: ModelSpec, tokens, t, dev: Device, *, fused: bool = True):
    """Forward seconds and FLOPs of the QKV and output projections (MLA: its low-rank chain)."""
    return _gemms(attention_matmuls(model, t, fused=fused), tokens, dev)


def elementwise_bytes(model: ModelSpec, tokens, t, sp, *, ffn_local, dropout: bool, act_bytes: float,
                       moe_tokens=None):
    """Bytes moved by the forward element-wise kernels of one layer, and their kernel count.

    Norms and residual adds (bias-dropout-add fused, as Megatron-LM) run on all tokens without
    sequence parallelism and on 1/t of them with it; rotary embedding and the MLP activation act on
    the tensor-parallel shards.
    """
    h = model.hidden_size
    seq_split = np.where(sp, t, 1.0)
    norms = 1 if (model.parallel_attention and model.parallel_attention_norms == 1) else 2
    norm_bytes = norms * 2 * act_bytes * tokens * h / seq_split
    residual_bytes = 2 * (3 * act_bytes + (1 if dropout else 0)) * tokens * h / seq_split
    rotary = 0.0
    if model.position_embedding == "rope":
        rotary = 2 * act_bytes * tokens * (model.num_heads + model.num_kv_heads) * attention_qk_dim(model) / t
    act_tokens = tokens if moe_tokens is None else moe_tokens
    act_reads = 2 if model.gated_mlp else 1
    activation = (act_reads + 1) * act_bytes * act_tokens * ffn_local
    kernels = norms + 2 + (1 if model.position_embedding == "rope" else 0) + 1
    return norm_bytes + residual_bytes + rotary + activation, kernels


def dense_layer_cost(model: ModelSpec, b, s_q, s_kv, t, sp, dev: Device, *, flash: bool, dropout: bool,  # noqa: PLR0913
                     fused: bool = True) -> LayerCost:
    """One dense transformer layer per micro-batch on one GPU; ``fused``: QKV and gate/up
    projections as one GEMM each (:func:`attention_matmuls`, :func:`mlp_matmuls`)."""
    tokens = np.asarray(b, float) * s_q
    proj_t, proj_f = _attention_projections(model, tokens, t, dev, fused=fused)
    mlp_t, mlp_f = _mlp_gemms(model, tokens, model.ffn_hidden_size, t, dev, fused=fused)
    att_fwd, att_bwd, att_f = _attention_core(model, b, s_q, s_kv, t, dev, flash=flash, dropout=dropout)
    ew_bytes, kernels = elementwise_bytes(model, tokens, t, sp, ffn_local=model.ffn_hidden_size / t, dropout=dropout,
                                      act_bytes=dev.act_bytes)
    ew = memory_bound_time(ew_bytes, mem_bw=dev.mem_bw, profile=dev.profile, kernels=kernels)
    gemm = proj_t + mlp_t
    return LayerCost(
        fwd=PassTimes(gemm=gemm, attention=att_fwd, elementwise=ew),
        bwd=PassTimes(gemm=2.0 * gemm, attention=att_bwd, elementwise=2.0 * ew),
        attention_core_fwd=att_fwd,
        flops_fwd=proj_f + mlp_f + att_f,
        # The fused QKV and gate/up GEMMs of this lowering re-run in proportion to the FLOPs of
        # the separate matmuls that the policy recomputes.
        alternate_matmuls_fwd=gemm * alternate_recomputed_share(model, t) + ew,
        mla_up_proj_fwd=proj_t * mla_up_proj_share(model, t, fused=fused),
    )


def routed_rows(tokens, model: ModelSpec, t, etp, imbalance: float = 1.0):
    """Token-expert pairs one GPU's experts process per micro-batch of ``tokens`` tokens per
    tensor-parallel group: the group's ``tokens * top_k`` pairs, spread over its ``t`` ranks and
    gathered back over the ``etp`` ranks that split each expert (Megatron-Core MoE parallel
    folding; ``etp = t`` gives GShard's ``tokens * top_k``, Lepikhin et al. 2020), the busiest
    GPU's share scaled by ``imbalance``."""
    return np.asarray(tokens, float) * model.moe.top_k * imbalance * np.asarray(etp, float) / np.asarray(t, float)


def moe_layer_cost(model: ModelSpec, b, s_q, s_kv, t, sp, ep, dev: Device, *, flash: bool, dropout: bool,  # noqa: PLR0913
                   imbalance: float, fused: bool = True, etp=None) -> LayerCost:
    """One MoE layer: attention as a dense layer, then router, routed experts and shared experts.

    With expert parallelism ``ep`` each GPU holds num_experts/ep experts, each split over ``etp``
    ranks (default ``t``), and receives :func:`routed_rows` token-expert pairs; ``imbalance`` >= 1
    scales the busiest GPU's share (the one that sets the pace). Shared experts run as a dense MLP
    on the attention's ``t`` ranks.
    """
    etp = t if etp is None else etp
    moe = model.moe
    assert moe is not None
    h = model.hidden_size
    tokens = np.asarray(b, float) * s_q
    proj_t, proj_f = _attention_projections(model, tokens, t, dev, fused=fused)
    att_fwd, att_bwd, att_f = _attention_core(model, b, s_q, s_kv, t, dev, flash=flash, dropout=dropout)
    router_t = device_gemm(tokens, moe.num_experts, h, dev)
    routed_tokens = routed_rows(tokens, model, t, etp, imbalance)
    local_experts = moe.num_experts / np.asarray(ep, float)
    rows_per_expert = routed_tokens / local_experts
    expert_t, expert_f = _mlp_gemms(model, rows_per_expert, moe.expert_ffn_hidden_size, etp, dev, count=local_experts,
                                    fused=fused)
    shared_t, shared_f = 0.0, 0.0
    if moe.num_shared_experts:
        shared_t, shared_f = _mlp_gemms(model, tokens, moe.shared_expert_ffn_hidden_size * moe.num_shared_experts, t, dev,
                                        fused=fused)
    ew_bytes, kernels = elementwise_bytes(model, tokens, t, sp, ffn_local=moe.expert_ffn_hidden_size / etp,
                                           dropout=dropout, act_bytes=dev.act_bytes,
                                           moe_tokens=routed_tokens)
    # Permutation of tokens to experts and back: read + write the routed activations twice.
    permute_bytes = 2 * 2 * dev.act_bytes * routed_tokens * h
    ew = memory_bound_time(ew_bytes + permute_bytes, mem_bw=dev.mem_bw, profile=dev.profile, kernels=kernels + 4)
    gemm = proj_t + router_t + expert_t + shared_t
    chain_share = alternate_recomputed_share(model, t, moe_layer=True)
    return LayerCost(
        fwd=PassTimes(gemm=gemm, attention=att_fwd, elementwise=ew),
        bwd=PassTimes(gemm=2.0 * gemm, attention=att_bwd, elementwise=2.0 * ew),
        attention_core_fwd=att_fwd,
        flops_fwd=proj_f + att_f + 2.0 * tokens * moe.num_experts * h + expert_f / imbalance + shared_f,
        alternate_matmuls_fwd=(proj_t + shared_t) * chain_share + router_t + expert_t + ew,
        mla_up_proj_fwd=proj_t * mla_up_proj_share(model, t, fused=fused),
    )


def logits_cost(model: ModelSpec, b, s_q, t, dev: Device) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward seconds of the output projection and vocab-parallel cross-entropy.

    The logits are computed in the training precision and the loss in fp32 (Megatron-LM's
    vocab-parallel cross entropy), so the softmax moves 4-byte values over s*b*V/t elements.
    """
    tokens = np.asarray(b, float) * s_q
    v_local = model.vocab_size / t
    proj = device_gemm(tokens, v_local, model.hidden_size, dev)
    loss = memory_bound_time(LOSS_BYTES_PER_LOGIT * tokens * v_local, mem_bw=dev.mem_bw, profile=dev.profile, kernels=3,
                             efficiency=dev.profile.loss_bw_efficiency)
    return proj + loss, 2.0 * proj + loss


def embedding_cost(model: ModelSpec, b, s_q, dev: Device) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward seconds of the token-embedding lookup (a gather, memory-bound)."""
    tokens = np.asarray(b, float) * s_q
    fwd = memory_bound_time(2 * dev.act_bytes * tokens * model.hidden_size, mem_bw=dev.mem_bw, profile=dev.profile)
    return fwd, 2.0 * fwd


def average_layer_cost(model: ModelSpec, b, s_q, s_kv, t, sp, ep, dev: Device, *, flash: bool,  # noqa: PLR0913
                       dropout: bool, imbalance: float, fused: bool = True, etp=None) -> tuple[LayerCost, float]:
    """The cost of a model's average layer, its dense and mixture-of-experts layers mixed in
    proportion, and the share of MoE layers (0 for a dense model)."""
    dense = dense_layer_cost(model, b, s_q, s_kv, t, sp, dev, flash=flash, dropout=dropout, fused=fused)
    if not model.is_moe:
        return dense, 0.0
    moe = moe_layer_cost(model, b, s_q, s_kv, t, sp, ep, dev, flash=flash, dropout=dropout, imbalance=imbalance,
                         fused=fused, etp=etp)
    f = model.num_moe_layers / model.num_layers

    def mix(x, y):
        return (1 - f) * x + f * y

    kinds = ("gemm", "attention", "elementwise")
    return LayerCost(
        fwd=PassTimes(*(mix(getattr(dense.fwd, k), getattr(moe.fwd, k)) for k in kinds)),
        bwd=PassTimes(*(mix(getattr(dense.bwd, k), getattr(moe.bwd, k)) for k in kinds)),
        attention_core_fwd=mix(dense.attention_core_fwd, moe.attention_core_fwd),
        flops_fwd=mix(dense.flops_fwd, moe.flops_fwd),
        alternate_matmuls_fwd=mix(dense.alternate_matmuls_fwd, moe.alternate_matmuls_fwd),
        mla_up_proj_fwd=mix(dense.mla_up_proj_fwd, moe.mla_up_proj_fwd),
    ), f


#: Transformer Engine's FP8 training recipe (per-tensor scaling, delayed or current; TE docs, "Using
#: FP8 with Transformer Engine", and its fused cast_transpose kernels): the cast of each FP8 GEMM
#: input is fused into the kernel that produces it (norm, activation), which also writes the
#: transposed FP8 copy Hopper's FP8 tensor cores need for the weight gradient: one more byte per
#: input element in the forward. In the backward every output gradient is read in 16 bits and
#: written in FP8 twice, plain and transposed (for the input and the weight gradient): two plus
#: two bytes per element. Scaling factors (amax) are reduced inside the same kernels.
FP8_CAST_BYTES_PER_INPUT = 1.0
FP8_CAST_BYTES_PER_OUTPUT_GRAD = 4.0


def fp8_cast_bytes(model: ModelSpec, tokens, t, *, moe_share: float = 0.0, routed_tokens=None, etp=None) -> tuple:
    """(forward, backward) bytes one average layer's FP8 casts and transposes move per
    micro-batch of ``tokens`` tokens (see :data:`FP8_CAST_BYTES_PER_INPUT`): the attention
    projections and the MLP of a dense layer; the routed experts' (on ``routed_tokens`` rows,
    split over ``etp`` ranks) and shared experts' MLPs of a mixture-of-experts layer, mixed in by
    ``moe_share``."""
    etp = t if etp is None else etp
    h, a, g, d = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim
    tokens = np.asarray(tokens, float)
    gate = 2 if model.gated_mlp else 1

    def mlp(rows, ffn, split=t):
        return rows * (h + ffn / split), rows * (gate * ffn / split + h)  # (GEMM inputs, output gradients)

    attn_in, attn_out = tokens * (h + a * d / t), tokens * ((a + 2 * g) * d / t + h)
    dense_in, dense_out = mlp(tokens, model.ffn_hidden_size)
    inputs, grads = attn_in + (1 - moe_share) * dense_in, attn_out + (1 - moe_share) * dense_out
    if model.moe is not None and moe_share:
        moe = model.moe
        routed_in, routed_out = mlp(routed_tokens, moe.expert_ffn_hidden_size, etp)
        shared_in, shared_out = mlp(tokens, moe.shared_expert_ffn_hidden_size * moe.num_shared_experts)
        inputs = inputs + moe_share * (routed_in + (shared_in if moe.num_shared_experts else 0.0))
        grads = grads + moe_share * (routed_out + (shared_out if moe.num_shared_experts else 0.0))
    return FP8_CAST_BYTES_PER_INPUT * inputs, FP8_CAST_BYTES_PER_OUTPUT_GRAD * grads


def with_fp8_casts(layer: LayerCost, model: ModelSpec, b, s_q, t, dev: Device, *, moe_share: float = 0.0,
                   routed_tokens=None, etp=None) -> LayerCost:
    """``layer`` with the FP8 recipe's casts and transposes added to its element-wise work."""
    fwd_bytes, bwd_bytes = fp8_cast_bytes(model, np.asarray(b, float) * s_q, t, moe_share=moe_share,
                                          routed_tokens=routed_tokens, etp=etp)
    # Forward casts ride in the kernels that produce the inputs; each backward GEMM's output
    # gradient gets a cast_transpose kernel of its own.
    fwd = memory_bound_time(fwd_bytes, mem_bw=dev.mem_bw, profile=dev.profile, kernels=0.0)
    bwd = memory_bound_time(bwd_bytes, mem_bw=dev.mem_bw, profile=dev.profile, kernels=4.0)
    # A recomputed forward casts its inputs again.
    return LayerCost(fwd=PassTimes(layer.fwd.gemm, layer.fwd.attention, layer.fwd.elementwise + fwd),
                     bwd=PassTimes(layer.bwd.gemm, layer.bwd.attention, layer.bwd.elementwise + bwd),
                     attention_core_fwd=layer.attention_core_fwd, flops_fwd=layer.flops_fwd,
                     alternate_matmuls_fwd=layer.alternate_matmuls_fwd + fwd, mla_up_proj_fwd=layer.mla_up_proj_fwd)
