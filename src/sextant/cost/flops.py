"""FLOPs of one training step, three ways (say which when reporting a utilization):

- model FLOPs: PaLM's convention (Chowdhery et al. 2022, appendix B; :func:`model_flops_per_token`),
  for MFU: 6 per matmul parameter per token, attention counted non-causally;
- hardware FLOPs: model FLOPs plus the recomputed forward (selective: the attention core, or
  under TorchTitan's per-op policy every second matmul and a MoE layer's router and routed
  experts; full: the whole layer), for HFU (Korthikanti et al. 2022, section 6);
- executed FLOPs: what the kernels run: under FlashAttention causal block skipping halves the
  score work and the backward runs 2.5x the forward (Dao 2023, algorithm 2); unfused attention
  computes the full score matrix, forward and twice in the backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.cost.layer import ALTERNATE_MATMULS, CAUSAL_FRACTION, FLASH_BWD_FLOP_RATIO, matmul_chain
from sextant.cost.params import attention_qk_dim, attention_v_dim, count_params, model_flops_per_token
from sextant.spec.model import ModelSpec

SELECTIVE, FULL = 1, 2


@dataclass(frozen=True)
class StepFlops:
    model: float
    hardware: np.ndarray
    executed: np.ndarray


def alternate_matmul_flops_per_token(model: ModelSpec) -> float:
    """Forward FLOPs per token that TorchTitan's per-op selective checkpointing recomputes over
    all layers (cost/layer.py ``ALTERNATE_MATMULS``): each layer's even-numbered matmuls and, in
    mixture-of-experts layers, the router and the routed experts."""
    def chain_flops(moe_layer: bool) -> float:
        return sum(2.0 * k * n for k, n in matmul_chain(model, 1, moe_layer=moe_layer)[1::2])

    total = model.num_dense_layers * chain_flops(False)
    if model.moe is not None and model.num_moe_layers:
        moe, h = model.moe, model.hidden_size
        expert = (3 if model.gated_mlp else 2) * h * moe.expert_ffn_hidden_size
        total += model.num_moe_layers * (chain_flops(True) + 2.0 * h * moe.num_experts + 2.0 * moe.top_k * expert)
    return total


def step_flops(model: ModelSpec, seq_len: int, tokens: float, recompute, *, flash: bool,
               selective: str = "attention_core") -> StepFlops:
    """Model, hardware and executed FLOPs of a step over ``tokens`` tokens of ``seq_len``-token
    sequences, per recomputation code (an array), ``selective`` naming the selective policy."""
    model_per_token = model_flops_per_token(model, seq_len)
    attn_fwd = 2.0 * model.num_layers * model.num_heads * (attention_qk_dim(model) + attention_v_dim(model)) * seq_len
    layers_active = count_params(model).layers_active
    layers_fwd = 2.0 * layers_active + attn_fwd
    attn_exec_fwd = attn_fwd * (CAUSAL_FRACTION if flash else 1.0)
    if selective == ALTERNATE_MATMULS:
        selective_model = selective_exec = alternate_matmul_flops_per_token(model)
    else:
        selective_model, selective_exec = attn_fwd, attn_exec_fwd
    recomputed = np.where(recompute == FULL, layers_fwd, np.where(recompute == SELECTIVE, selective_model, 0.0)) * tokens
    attn_exec = attn_exec_fwd * (1.0 + (FLASH_BWD_FLOP_RATIO if flash else 2.0))
    matmul = model_per_token - 3.0 * attn_fwd
    executed = (matmul + attn_exec + np.where(recompute == FULL, 2.0 * layers_active + attn_exec_fwd,
                                              np.where(recompute == SELECTIVE, selective_exec, 0.0))) * tokens
    model_flops = model_per_token * tokens
    return StepFlops(model=model_flops, hardware=model_flops + recomputed, executed=executed)
