"""Model architecture: a decoder-only transformer, dense or mixture-of-experts.

Field names follow Megatron-LM where HuggingFace and Megatron differ (``ffn_hidden_size``,
``num_query_groups`` is called ``num_kv_heads`` here). Parameter counts live in
:mod:`sextant.cost.params`, not here: a spec holds data, the cost package derives from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sextant.spec.base import Spec
from sextant.spec.limits import (
    MAX_EXPERTS,
    MAX_FFN_HIDDEN_SIZE,
    MAX_HEADS,
    MAX_HIDDEN_SIZE,
    MAX_LAYERS,
    MAX_SEQUENCE_TOKENS,
    MAX_VOCAB_SIZE,
)


class MoESpec(Spec):
    """Mixture-of-experts feed-forward layers (Switch/GShard style top-k routing).

    ``first_dense_layers`` leading layers use the dense MLP of ``ModelSpec.ffn_hidden_size``
    (DeepSeek-V3's ``first_k_dense_replace``); every ``layer_freq``-th layer after them is MoE.
    """

    num_experts: int = Field(gt=0, le=MAX_EXPERTS)
    top_k: int = Field(gt=0)
    expert_ffn_hidden_size: int = Field(gt=0, le=MAX_FFN_HIDDEN_SIZE)
    num_shared_experts: int = Field(default=0, ge=0)
    shared_expert_ffn_hidden_size: int = Field(default=0, ge=0)
    first_dense_layers: int = Field(default=0, ge=0)
    layer_freq: int = Field(default=1, gt=0)
    #: Group-limited routing (DeepSeek-V3's ``n_group`` and ``topk_group``): the experts form
    #: ``expert_groups`` groups and a token's top-k experts come from its best
    #: ``groups_per_token`` groups (0: no limit). Laid one group per node, this is DeepSeek-V3's
    #: node-limited routing ("each token will be sent to at most M = 4 nodes", section 2.1.2).
    expert_groups: int = Field(default=1, gt=0)
    groups_per_token: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> MoESpec:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.num_experts % self.expert_groups:
            raise ValueError(f"expert_groups={self.expert_groups} does not divide num_experts={self.num_experts}")
        if self.groups_per_token > self.expert_groups:
            raise ValueError(f"groups_per_token={self.groups_per_token} exceeds expert_groups={self.expert_groups}")
        if self.num_shared_experts and not self.shared_expert_ffn_hidden_size:
            raise ValueError("num_shared_experts > 0 needs shared_expert_ffn_hidden_size")
        return self


class MLASpec(Spec):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed queries and KV."""

    q_lora_rank: int = Field(ge=0)  # 0: queries are not compressed (DeepSeek-V2-Lite)
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)


class ModelSpec(Spec):
    """A decoder-only transformer. Sizes are counts (not bytes)."""

    name: str
    source: str = Field(description="Where the architecture comes from (paper, config.json).")
    hidden_size: int = Field(gt=0, le=MAX_HIDDEN_SIZE)
    num_layers: int = Field(gt=0, le=MAX_LAYERS)
    num_heads: int = Field(gt=0, le=MAX_HEADS)
    num_kv_heads: int = Field(gt=0, le=MAX_HEADS)
    head_dim: int = Field(gt=0, le=MAX_HIDDEN_SIZE)
    ffn_hidden_size: int = Field(gt=0, le=MAX_FFN_HIDDEN_SIZE, description="Dense MLP intermediate size.")
    vocab_size: int = Field(gt=0, le=MAX_VOCAB_SIZE)
    max_seq_len: int = Field(default=4096, gt=0, le=MAX_SEQUENCE_TOKENS)
    #: Gated MLPs (SwiGLU, GeGLU) have three matrices, plain ones (GeLU, ReLU) two.
    mlp: Literal["swiglu", "geglu", "gelu", "relu"] = "swiglu"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    position_embedding: Literal["rope", "learned", "alibi"] = "rope"
    tie_embeddings: bool = False
    #: Bias on every linear layer (GPT-2/3, OPT, GPT-NeoX).
    linear_bias: bool = False
    #: Bias on the QKV projection only (Qwen2).
    qkv_bias: bool = False
    #: Attention and MLP read the same normalized input and are summed (GPT-J, Falcon).
    parallel_attention: bool = False
    #: Number of LayerNorms per layer when ``parallel_attention`` (Falcon-40B/180B use two).
    parallel_attention_norms: int = Field(default=1, ge=1, le=2)
    moe: MoESpec | None = None
    mla: MLASpec | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        return self

    def context_note(self, tokens: int, what: str) -> str | None:
        """The report's line when ``what`` (a sequence, a request) of ``tokens`` tokens is longer
        than the model's context (``max_position_embeddings``), else None. Not an error: published
        runs train and serve past the declared context (context extension, RoPE scaling; NeMo's
        Llama 2 7B at 128k, TensorRT-LLM's GPT-J at 2048 + 2048), so the prediction goes on and
        says so."""
        if tokens <= self.max_seq_len:
            return None
        table = (f"; the learned position table is counted at {self.max_seq_len:,} rows"
                 if self.position_embedding == "learned" else "")
        return (f"{what} of {tokens:,} tokens is longer than {self.name}'s context of {self.max_seq_len:,}: "
                f"predicted as if the context were extended, at no cost for the extension{table}")

    @property
    def gated_mlp(self) -> bool:
        return self.mlp in ("swiglu", "geglu")

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def num_moe_layers(self) -> int:
        if self.moe is None:
            return 0
        eligible = self.num_layers - self.moe.first_dense_layers
        return max(0, (eligible + self.moe.layer_freq - 1) // self.moe.layer_freq)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def moe_layer_indices(self) -> list[int]:
        """Which layers are MoE (from 0): after ``first_dense_layers`` dense ones, every
        ``layer_freq``-th; as many as :attr:`num_moe_layers` counts."""
        if self.moe is None:
            return []
        return list(range(self.moe.first_dense_layers, self.num_layers, self.moe.layer_freq))
