"""FLOPs of one training step, three ways (say which when reporting a utilization):

- model FLOPs: PaLM's convention (Chowdhery et al. 2022, appendix B; :func:`model_flops_per_token`),
  for MFU: 6 per matmul parameter per token, attention counted non-causally;
- hardware FLOPs: model FLOPs plus the recomputed forward (selective: the attention core;
  full: the whole layer), for HFU (Korthikanti et al. 2022, section 6);
- executed FLOPs: what the kernels run: under FlashAttention causal block skipping halves the
  score work and the backward runs 2.5x the forward (Dao 2023, algorithm 2); unfused attention
  computes the full score matrix, forward and twice in the backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.cost.layer import CAUSAL_FRACTION, FLASH_BWD_FLOP_RATIO
from sextant.cost.params import attention_qk_dim, attention_v_dim, count_params, model_flops_per_token
from sextant.spec.model import ModelSpec

SELECTIVE, FULL = 1, 2


@dataclass(frozen=True)
class StepFlops:
    model: float
    hardware: np.ndarray
    executed: np.ndarray


def step_flops(model: ModelSpec, seq_len: int, tokens: float, recompute, *, flash: bool) -> StepFlops:
    """Model, hardware and executed FLOPs of a step over ``tokens`` tokens of ``seq_len``-token
    sequences, per recomputation code (an array)."""
    model_per_token = model_flops_per_token(model, seq_len)
    attn_fwd = 2.0 * model.num_layers * model.num_heads * (attention_qk_dim(model) + attention_v_dim(model)) * seq_len
    layers_active = count_params(model).layers_active
    layers_fwd = 2.0 * layers_active + attn_fwd
    recomputed = np.where(recompute == FULL, layers_fwd, np.where(recompute == SELECTIVE, attn_fwd, 0.0)) * tokens
    attn_exec_fwd = attn_fwd * (CAUSAL_FRACTION if flash else 1.0)
    attn_exec = attn_exec_fwd * (1.0 + (FLASH_BWD_FLOP_RATIO if flash else 2.0))
    matmul = model_per_token - 3.0 * attn_fwd
    executed = (matmul + attn_exec + np.where(recompute == FULL, 2.0 * layers_active + attn_exec_fwd,
                                              np.where(recompute == SELECTIVE, attn_exec_fwd, 0.0))) * tokens
    model_flops = model_per_token * tokens
    return StepFlops(model=model_flops, hardware=model_flops + recomputed, executed=executed)
