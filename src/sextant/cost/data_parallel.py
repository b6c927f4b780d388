"""Data-parallel and ZeRO communication of a training step, per pipeline stage and GPU.

- Gradients are reduced over the ``dp x cp`` group (context-parallel ranks hold the same
  weights): an all-reduce for ZeRO-0, a reduce-scatter for ZeRO >= 1, of the gradient buffer
  (its width: the precision's gradient bytes). Overlapped with the last micro-batch's backward
  when the framework buckets it (PyTorch DDP, Li et al. VLDB 2020; Megatron-LM
  ``--overlap-grad-reduce``).
- ZeRO-1/2 all-gather the updated parameters at the precision's weight width after the step,
  overlapped with the next forward when prefetched (``--overlap-param-gather``).
- ZeRO-3 (= FSDP full shard) gathers each layer's parameters for the forward, the recomputed
  forward and the backward of every micro-batch, and reduce-scatters its gradients, prefetched so
  that only the excess over that micro-batch's compute shows (Rajbhandari et al. SC20; Zhao et al.
  VLDB 2023, PyTorch FSDP). Two gather units are live at once: the one in use and the one
  prefetched.
- Experts are sharded over their expert-data-parallel group (``dp x cp / ep``), so their
  gradients and parameters move over that group.
- Tied embeddings with pipeline parallelism: the first and last stage all-reduce the embedding's
  gradient (Megatron-LM's ``_allreduce_word_embedding_grads``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.cost import comm
from sextant.cost.params import largest_matrix_params
from sextant.spec.model import ModelSpec
from sextant.spec.strategy import Overlap

FULL_RECOMPUTE = 2
#: ZeRO-3 gather units live at once: the one in use and the one prefetched.
ZERO3_LIVE_UNITS = 2


@dataclass(frozen=True)
class DataParallelCollectives:
    """The data-parallel group's collectives (and the expert-data-parallel group's, for MoE),
    built once per group: each is affine in the buffer size, so one cost serves every buffer."""

    all_reduce: comm.Collective
    gather: comm.Collective  # all-gather; a reduce-scatter costs the same on a ring
    expert_all_reduce: comm.Collective | None
    expert_gather: comm.Collective | None
    grad_bytes: float  # per gradient element
    weight_bytes: float  # per parameter element as gathered

    @classmethod
    def of(cls, groups: tuple, fab: comm.Fabric, *, flat: bool, moe: bool, grad_bytes: float,
           weight_bytes: float) -> DataParallelCollectives:
        """``groups``: (dp group size, its ranks per node, expert group size, its ranks per node)."""
        dp_group, dp_per_node, edp_group, edp_per_node = groups
        return cls(
            all_reduce=comm.all_reduce_cost(dp_group, dp_per_node, fab, flat=flat),
            gather=comm.all_gather_cost(dp_group, dp_per_node, fab, flat=flat),
            expert_all_reduce=comm.all_reduce_cost(edp_group, edp_per_node, fab, flat=flat) if moe else None,
            expert_gather=comm.all_gather_cost(edp_group, edp_per_node, fab, flat=flat) if moe else None,
            grad_bytes=grad_bytes, weight_bytes=weight_bytes)

    def step_time(self, nonexpert, expert, *, zero, recompute, microbatches, fwd_s, bwd_s, compute_s,  # noqa: PLR0913
                  overlap: Overlap) -> np.ndarray:
        """Exposed seconds of one stage's data-parallel communication per step, for its
        ``nonexpert`` and ``expert`` parameters per GPU (before ZeRO sharding); ``fwd_s``,
        ``bwd_s``, ``compute_s``: the stage's forward, backward and whole compute per micro-batch,
        what the collectives can hide behind (see the module docstring)."""
        gb, wb, eta = self.grad_bytes, self.weight_bytes, overlap.efficiency
        ar, rs, ag = self.all_reduce(nonexpert * gb), self.gather(nonexpert * gb), self.gather(nonexpert * wb)
        if self.expert_gather is not None:
            ar, rs, ag = (ar + self.expert_all_reduce(expert * gb), rs + self.expert_gather(expert * gb),
                          ag + self.expert_gather(expert * wb))
        grad_sync = np.where(zero == 0, ar, rs)
        grad_exposed = comm.exposed(grad_sync, bwd_s, eta) if overlap.dp_grad_reduce else grad_sync
        gather_exposed = comm.exposed(ag, fwd_s, eta) if overlap.dp_param_gather else ag
        zero12 = grad_exposed + np.where(zero >= 1, gather_exposed, 0.0)
        z3_mb = ag * (2.0 + np.where(recompute == FULL_RECOMPUTE, 1.0, 0.0)) + rs
        z3 = microbatches * (comm.exposed(z3_mb, compute_s, eta) if overlap.dp_param_gather else z3_mb)
        return np.where(zero >= 3, z3, zero12)


def zero3_gather_unit_params(model: ModelSpec, unit: str, tp, ep, edp_group, nonexpert_layer: float,
                             expert_layer: float, etp=None) -> np.ndarray:
    """Parameters per GPU that ZeRO-3 gathers at once: a whole layer (FSDP wrapping per block,
    as TorchTitan), whose experts are sharded only over their expert-data-parallel group, or the
    largest weight matrix (DeepSpeed ZeRO-3 gathers per sub-module)."""
    if unit == "module":
        return largest_matrix_params(model) / tp
    etp = tp if etp is None else etp
    return nonexpert_layer / tp + np.where(edp_group > 1, expert_layer / (etp * ep), 0.0)


def zero3_buffer_bytes(zero, gather_unit_params, weight_bytes: float) -> np.ndarray:
    """ZeRO-3's gathered parameters per GPU: two gather units at the weight width."""
    return np.where(zero >= 3, ZERO3_LIVE_UNITS * weight_bytes * gather_unit_params, 0.0)


def zero3_pipeline_resident_bytes(zero, pp, stage_params, pb) -> np.ndarray:
    """ZeRO-3 under pipeline parallelism, as PyTorch's pipelining runs FSDP2 (TorchTitan): the
    stage's parameters stay gathered from their first micro-batch to the end of the step
    (``reshard_after_forward`` is off when pipeline parallelism is on, so that each micro-batch does
    not gather them again), and their unsharded gradients accumulate in the reduction dtype
    across micro-batches (``set_requires_gradient_sync(False)`` until the last; FSDP2 keeps an
    ``unsharded_accumulated_grad`` in ``reduce_dtype``, fp32 in mixed precision). Bytes per GPU:
    the stage's parameters at the weight width plus the gradient width; none otherwise."""
    return np.where((np.asarray(zero) >= 3) & (np.asarray(pp) > 1), stage_params * (pb.weight + pb.grad), 0.0)


def tied_embedding_sync(model: ModelSpec, tp, single_stage, untied: bool, crosses_node, fab: comm.Fabric,
                        grad_bytes: float) -> np.ndarray:
    """Seconds the first and last stage spend all-reducing a tied embedding's gradient (none with
    one stage or untied embeddings)."""
    return np.where(single_stage | untied, 0.0,
                    comm.p2p(model.vocab_size * model.hidden_size / tp * grad_bytes, crosses_node, fab) * 2.0)
