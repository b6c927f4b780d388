"""Communication of one transformer layer under tensor, context and expert parallelism, per
micro-batch on one GPU (exposed time is the caller's: it knows what overlaps what).

- Tensor parallelism: two all-reduces in the forward and two in the backward of each layer
  (Shoeybi et al. 2019, figure 4; with sequence parallelism a reduce-scatter and an all-gather
  each, the same bytes on a ring: Korthikanti et al. 2022, section 4.2.2), two more in a fully
  recomputed forward. DeepSpeed's ``partition_activations`` keeps 1/tp of a checkpointed layer
  input and all-gathers it before the recomputation.
- Context parallelism (ring attention; Liu et al. 2023): cp - 1 exchanges of the local K and V
  in the forward, twice that (K, V and their gradients) in the backward.
- Expert parallelism: an all-to-all to dispatch the tokens to their experts and one to combine
  them, in the forward and in the backward (and again in a recomputed forward), each carrying
  every routed copy of a token (top-k), the busiest rank's share scaled by the load imbalance
  (Lepikhin et al. 2021, GShard; Fedus et al. 2022, Switch Transformer). With expert tensor
  parallelism ``etp`` > 1 the dispatched tokens are all-gathered over the etp ranks and the
  experts' outputs reduce-scattered back (Megatron-Core's ``MoEAlltoAllTokenDispatcher``). The
  expert-parallel group's ranks are ``etp`` apart (Megatron-Core's expert rank order
  tp-ep-dp-pp with tp = etp: Liu et al. 2025, "MoE Parallel Folding"). The ``deepep``
  dispatcher (DeepEP, HybridEP) sends a token across the network once per remote node among its
  destinations rather than once per expert (:func:`remote_copy_share`).
- Pipeline parallelism: one activation send and one gradient receive per micro-batch and stage
  boundary (Narayanan et al. 2021).
"""

from __future__ import annotations

import numpy as np

from sextant.cost import comm
from sextant.cost.params import attention_qk_dim, attention_v_dim
from sextant.spec.model import ModelSpec, MoESpec

FULL_RECOMPUTE = 2


def tp_layer_comm(layer_act_bytes, tp, gpus_per_node, fab: comm.Fabric, recompute, partitioned) -> np.ndarray:
    """Seconds of one layer's tensor-parallel collectives per micro-batch; ``layer_act_bytes``:
    the layer's input activations of the micro-batch (what each all-reduce moves)."""
    tp_per_node = comm.group_per_node(tp, 1, gpus_per_node)
    one = comm.all_reduce(layer_act_bytes, tp, tp_per_node, fab)
    total = (4.0 + np.where(recompute == FULL_RECOMPUTE, 2.0, 0.0)) * one
    return total + np.where(partitioned, comm.all_gather(layer_act_bytes, tp, tp_per_node, fab), 0.0)


def cp_layer_comm(model: ModelSpec, b, s_local, tp, cp, gpus_per_node, fab: comm.Fabric,  # noqa: PLR0913
                  act_bytes: float) -> np.ndarray:
    """Seconds of one layer's ring-attention exchanges per micro-batch of ``b`` sequences of
    ``s_local`` tokens on this rank (before overlap with the attention blocks). MLA exchanges its
    per-head keys and values as materialized for attention."""
    kv_dim = (model.num_heads if model.mla else model.num_kv_heads) * (attention_qk_dim(model) + attention_v_dim(model))
    kv_bytes = act_bytes * b * s_local * kv_dim / tp
    cp_per_node = comm.group_per_node(cp, tp, gpus_per_node)
    return (cp - 1) * comm.p2p(kv_bytes, cp_per_node < cp, fab) * 3.0  # fwd: K,V; bwd: K,V, dK,dV


def remote_copy_share(moe: MoESpec, nodes) -> np.ndarray:
    """Network bytes of a node-deduplicated dispatch over ``nodes`` nodes, as a share of a plain
    all-to-all's: a token's ``k`` copies reach on average ``M (1 - (1 - 1/M)^k)`` distinct nodes
    when its experts fall uniformly on the ``M`` nodes its routing allows (balanced routing, draws
    with replacement), against ``k`` copies sent one by one. ``M`` is every node of the group, or
    with group-limited routing the nodes its best ``groups_per_token`` groups occupy (experts laid
    out contiguously, Megatron-Core's expert placement; DeepSeek-V3: 8 groups, 4 per token, 4 of
    8 nodes at EP 64)."""
    k = float(moe.top_k)
    n = np.asarray(nodes, float)
    reach = n
    if moe.groups_per_token:
        nodes_per_group = np.maximum(n / moe.expert_groups, 1.0)
        reach = np.minimum(n, moe.groups_per_token * nodes_per_group)
    return reach * (1.0 - (1.0 - 1.0 / reach) ** k) / k


def ep_layer_comm(model: ModelSpec, layer_act_bytes, tp, ep, etp, sequence_parallel, gpus_per_node,  # noqa: PLR0913
                  fab: comm.Fabric, recompute, imbalance: float, dispatcher: str = "alltoall") -> np.ndarray:
    """Seconds of one MoE layer's expert-parallel all-to-alls per micro-batch: dispatch and
    combine, forward and backward (and in a recomputed forward), and with ``etp`` > 1 the
    all-gather and reduce-scatter of the dispatched tokens over the expert-tensor-parallel ranks.
    Without sequence parallelism every tensor-parallel rank holds, and sends, all of the
    micro-batch's tokens. ``dispatcher``: ``alltoall`` (NCCL, one copy per expert) or ``deepep``
    (one copy per remote node, forwarded over NVLink)."""
    a2a_bytes = layer_act_bytes * model.moe.top_k / np.where(sequence_parallel, tp, 1.0) * imbalance
    ep_per_node = comm.group_per_node(ep, etp, gpus_per_node)
    count = 4.0 + np.where(recompute == FULL_RECOMPUTE, 2.0, 0.0)
    gathered = a2a_bytes * etp  # the dispatched tokens of the etp ranks, gathered on each
    etp_gather = comm.all_gather(gathered, etp, comm.group_per_node(etp, 1, gpus_per_node), fab)
    if dispatcher == "deepep":
        share = remote_copy_share(model.moe, np.asarray(ep, float) / ep_per_node)
        a2a = comm.node_deduplicated_all_to_all(a2a_bytes, ep, ep_per_node, fab, share)
    else:
        a2a = comm.all_to_all(a2a_bytes, ep, ep_per_node, fab)
    return count * (a2a + np.where(etp > 1, etp_gather, 0.0))


def pp_p2p(layer_act_bytes, tp, crosses_node, fab: comm.Fabric) -> np.ndarray:
    """Seconds of one pipeline send (or receive) of a micro-batch's activations, split over the
    tensor-parallel ranks."""
    return comm.p2p(layer_act_bytes / tp, crosses_node, fab)
