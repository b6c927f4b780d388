"""Parameter counts and model FLOPs per token, derived once from a :class:`ModelSpec`.

Counting follows the layer structure of Megatron-LM and HuggingFace transformers; the model
FLOPs convention is PaLM's (Chowdhery et al. 2022, appendix B): 6 FLOPs per matmul parameter per
token for forward and backward, plus 12 * L * H * Q * T for attention (non-causal, as PaLM
counts it). MFU divides these model FLOPs by peak; HFU adds the recomputation FLOPs actually run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.spec.model import ModelSpec


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by part. ``*_layer`` entries are per transformer layer."""

    attention_layer: int
    dense_mlp_layer: int
    moe_router_layer: int
    moe_expert: int  # one routed expert
    moe_shared_layer: int  # all shared experts of one layer
    norms_layer: int
    embedding: int  # input token embedding
    position_embedding: int
    output: int  # untied output projection (0 when tied)
    final_norm: int
    num_dense_layers: int
    num_moe_layers: int
    num_experts: int
    top_k: int

    @property
    def dense_layer(self) -> int:
        return self.attention_layer + self.dense_mlp_layer + self.norms_layer

    @property
    def moe_layer_total(self) -> int:
        return (
            self.attention_layer
            + self.norms_layer
            + self.moe_router_layer
            + self.moe_shared_layer
            + self.num_experts * self.moe_expert
        )

    @property
    def moe_layer_active(self) -> int:
        return self.moe_layer_total - (self.num_experts - self.top_k) * self.moe_expert

    @property
    def layers_total(self) -> int:
        return self.num_dense_layers * self.dense_layer + self.num_moe_layers * self.moe_layer_total

    @property
    def layers_active(self) -> int:
        return self.num_dense_layers * self.dense_layer + self.num_moe_layers * self.moe_layer_active

    @property
    def expert_params(self) -> int:
        """Routed-expert parameters of the whole model (the part expert parallelism shards)."""
        return self.num_moe_layers * self.num_experts * self.moe_expert

    @property
    def embeddings(self) -> int:
        return self.embedding + self.position_embedding + self.output

    @property
    def total(self) -> int:
        return self.layers_total + self.embeddings + self.final_norm

    @property
    def active(self) -> int:
        return self.layers_active + self.embeddings + self.final_norm


def attention_params(model: ModelSpec) -> int:
    """Q, K, V and output projections (with biases where the model has them).

    MLA (DeepSeek-V2 paper, section 2.1): queries through a ``q_lora_rank`` bottleneck with its
    RMSNorm, keys/values through ``kv_lora_rank`` plus a shared rotary key of ``qk_rope_head_dim``.
    """
    h, a = model.hidden_size, model.num_heads
    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = h * a * qk if m.q_lora_rank == 0 else h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * a * qk
        kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
        kv += m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim)
        return q + kv + a * m.v_head_dim * h
    d, g = model.head_dim, model.num_kv_heads
    qkv_out = (a + 2 * g) * d
    count = h * qkv_out + a * d * h
    if model.linear_bias:
        count += qkv_out + h
    elif model.qkv_bias:
        count += qkv_out
    return count


def mlp_params(model: ModelSpec, ffn: int) -> int:
    """One feed-forward block of intermediate size ``ffn``: SwiGLU has three matrices, GeLU two."""
    h = model.hidden_size
    matrices = 3 if model.gated_mlp else 2
    count = matrices * h * ffn
    if model.linear_bias:
        count += (matrices - 1) * ffn + h
    return count


def norm_params(model: ModelSpec) -> int:
    """One normalization layer: RMSNorm has a scale, LayerNorm a scale and a bias."""
    return model.hidden_size * (1 if model.norm == "rmsnorm" else 2)


def count_params(model: ModelSpec) -> ParamCounts:
    h, v = model.hidden_size, model.vocab_size
    norms_per_layer = model.parallel_attention_norms if model.parallel_attention else 2
    moe = model.moe
    return ParamCounts(
        attention_layer=attention_params(model),
        dense_mlp_layer=mlp_params(model, model.ffn_hidden_size),
        moe_router_layer=h * moe.num_experts if moe else 0,
        moe_expert=mlp_params(model, moe.expert_ffn_hidden_size) if moe else 0,
        moe_shared_layer=moe.num_shared_experts * mlp_params(model, moe.shared_expert_ffn_hidden_size)
        if moe
        else 0,
        norms_layer=norms_per_layer * norm_params(model),
        embedding=v * h,
        position_embedding=model.max_seq_len * h if model.position_embedding == "learned" else 0,
        output=0 if model.tie_embeddings else v * h,
        final_norm=norm_params(model),
        num_dense_layers=model.num_dense_layers,
        num_moe_layers=model.num_moe_layers,
        num_experts=moe.num_experts if moe else 0,
        top_k=moe.top_k if moe else 0,
    )


def attention_qk_dim(model: ModelSpec) -> int:
    """Per-head dimension of the query-key product."""
    if model.mla is not None:
        return model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
    return model.head_dim


def attention_v_dim(model: ModelSpec) -> int:
    """Per-head dimension of the values."""
    return model.mla.v_head_dim if model.mla is not None else model.head_dim


def model_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B convention (forward + backward, no recompute).

    6 * (active matmul parameters, the logits projection included) + 6 * L * a * (d_qk + d_v) * s;
    for ordinary attention d_qk = d_v = Q, which gives PaLM's 12 * L * H * Q * T.
    """
    counts = count_params(model)
    matmul_params = counts.layers_active + v_h(model)
    attention = 6 * model.num_layers * model.num_heads * (attention_qk_dim(model) + attention_v_dim(model)) * seq_len
    return 6.0 * matmul_params + attention


def v_h(model: ModelSpec) -> int:
    """Parameters of the logits projection (used as a matmul whether or not it is tied)."""
    return model.vocab_size * model.hidden_size


def largest_matrix_params(model: ModelSpec) -> int:
    """Parameters of the largest single weight matrix as frameworks store it: the fused QKV
    projection, the fused gate+up projection of a gated MLP (Megatron's ``linear_fc1``), the
    down projection, or one expert's fused fc1."""
    h = model.hidden_size
    gate = 2 if model.gated_mlp else 1
    candidates = [
        h * (model.num_heads + 2 * model.num_kv_heads) * model.head_dim,
        h * gate * model.ffn_hidden_size,
    ]
    if model.moe is not None:
        candidates.append(h * gate * model.moe.expert_ffn_hidden_size)
    return max(candidates)


@dataclass(frozen=True)
class StageParams:
    """Parameters one GPU of each pipeline stage holds (first, fullest middle, last stage), split
    by tensor parallelism and, for routed experts, expert parallelism; before ZeRO sharding.
    ``nonexpert_layer``/``expert_layer``: one average layer's, unsplit."""

    nonexpert: tuple[np.ndarray, np.ndarray, np.ndarray]
    expert: tuple[np.ndarray, np.ndarray, np.ndarray]
    nonexpert_layer: float
    expert_layer: float


def stage_params(model: ModelSpec, layers: tuple, tp, ep, single_stage, etp=None) -> StageParams:
    """Parameters per GPU of the stages holding ``layers`` = (first, middle, last) layer counts:
    the first stage also holds the embedding, the last the final norm and the output projection
    (a tied embedding's copy when pp > 1, whose gradient the two stages all-reduce); one stage
    holds both. Experts are split over ``etp x ep`` ranks (``etp`` default ``tp``)."""
    etp = tp if etp is None else etp
    counts = count_params(model)
    moe_layers = counts.num_moe_layers
    experts_per_layer = counts.num_experts * counts.moe_expert
    nonexpert_layer = ((model.num_layers - moe_layers) * counts.dense_layer
                       + moe_layers * (counts.moe_layer_total - experts_per_layer)) / model.num_layers
    expert_layer = moe_layers * experts_per_layer / model.num_layers
    emb = (counts.embedding + counts.position_embedding) / tp
    out = np.where(single_stage & (counts.output == 0), 0.0, model.vocab_size * model.hidden_size / tp) + counts.final_norm
    n_first, n_mid, n_last = layers
    nonexpert = (n_first * nonexpert_layer / tp + emb + np.where(single_stage, out, 0.0),
                 n_mid * nonexpert_layer / tp,
                 n_last * nonexpert_layer / tp + out + np.where(single_stage, emb, 0.0))
    expert = tuple(n * expert_layer / (etp * ep) for n in layers)
    return StageParams(nonexpert, expert, nonexpert_layer, expert_layer)  # type: ignore[arg-type]
