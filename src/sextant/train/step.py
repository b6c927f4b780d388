"""The training step: compute, communication, pipeline schedule, optimizer and memory per GPU.

One function, :func:`evaluate`, takes a :class:`Candidates` table and returns a
:class:`StepEvaluation` of arrays. ``predict`` calls it with one row, the planner with many.

Assumptions stated per collective (the ``Overlap`` flags of the strategy switch them):
- Tensor-parallel all-reduce (or reduce-scatter + all-gather with sequence parallelism): two in
  the forward and two in the backward of each layer (Shoeybi et al. 2019, figure 4), two more in
  the recomputed forward. Exposed unless ``tp_comm`` overlap, which hides them behind the layer's
  GEMMs (Transformer Engine userbuffers; Wang et al. ASPLOS 2023).
- Context-parallel ring attention: cp - 1 exchanges of the local K and V in the forward, twice
  that (K, V and their gradients) in the backward, overlapped with the attention blocks (Liu et
  al. 2023, Ring Attention); only the excess is exposed.
- Expert-parallel all-to-all: dispatch and combine in the forward and the backward, exposed.
- Pipeline send/receive: exposed per micro-batch unless ``pp_p2p`` overlap.
- Data-parallel gradient reduction over the dp*cp group (all-reduce for ZeRO-0, reduce-scatter
  for ZeRO >= 1) overlapped with the last micro-batch's backward when ``dp_grad_reduce``; the
  ZeRO-1/2 parameter all-gather overlapped with the next forward when ``dp_param_gather``.
  ZeRO-3 gathers parameters for the forward, the recomputed forward and the backward of every
  micro-batch, and reduce-scatters its gradients, prefetched so only the excess over compute
  shows (Rajbhandari et al. 2020; Zhao et al. 2023, PyTorch FSDP).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.cost import comm
from sextant.cost.compute import memory_bound_time
from sextant.cost.finetune import MethodCosts, method_costs
from sextant.cost.layer import (
    CAUSAL_FRACTION,
    FLASH_BWD_FLOP_RATIO,
    Device,
    LayerCost,
    dense_layer_cost,
    embedding_cost,
    logits_cost,
    moe_layer_cost,
)
from sextant.cost.memory import (
    grad_bytes,
    layer_activation_bytes,
    layer_activation_peak_extra,
    logits_activation_bytes,
    model_state_bytes,
    optimizer_state_bytes,
    optimizer_step_bytes,
    pipeline_in_flight,
    precision_bytes,
)
from sextant.cost.params import (
    attention_qk_dim,
    attention_v_dim,
    count_params,
    largest_matrix_params,
    model_flops_per_token,
)
from sextant.cost.tiers import TierRates, tier_rates
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile
from sextant.spec.strategy import Overlap
from sextant.spec.workload import TrainWorkload
from sextant.train.candidates import Candidates
from sextant.train.methods import apply_method
from sextant.train.offload import BUFFERS, OffloadTimes, offload_times
from sextant.train.pipeline import schedule_time, stage_layers
from sextant.units import GiB

#: Device memory outside PyTorch's tensors: CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers.
RUNTIME_RESERVED_BYTES = 1.0 * GiB
#: Caching-allocator fragmentation, as a fraction of the memory in tensors.
ALLOCATOR_OVERHEAD = 0.05

TIME_PARTS = (
    "gemm", "attention", "elementwise", "recompute", "embedding_logits", "tp_comm", "cp_comm",
    "ep_comm", "pp_p2p", "framework_overhead", "pipeline_bubble", "dp_comm", "optimizer", "offload_wait",
)
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "comm_buffers", "overhead")


@dataclass(frozen=True)
class TrainContext:
    """Everything fixed across the candidates of one evaluation."""

    model: ModelSpec
    cluster: ClusterSpec
    profile: HardwareProfile
    workload: TrainWorkload
    precision: str = "bf16"
    attention_kernel: str = "flash"
    dropout: bool = False
    overlap: Overlap = Overlap()
    dp_collective: str = "hierarchical"
    zero3_gather_unit: str = "layer"
    fp32_grad_copy: bool = True
    bf16_grad_copy: bool = False
    partition_activations: bool = False
    #: Seconds the framework adds to every layer's forward, recomputation and backward of one
    #: micro-batch, whatever its size (a framework preset's ``layer_pass_overhead_s``).
    layer_pass_overhead_s: float = 0.0
    #: Memory beyond the modelled tensors (a framework preset's ``runtime_reserved_gib`` and
    #: ``allocator_overhead``; defaults below).
    runtime_reserved_bytes: float = RUNTIME_RESERVED_BYTES
    allocator_overhead: float = ALLOCATOR_OVERHEAD

    @property
    def method(self) -> MethodCosts:
        pb = precision_bytes(self.precision)
        return method_costs(self.model, self.workload.method, self.workload.adapter_rank, pb.weight, pb.grad,
                            optimizer_state_bytes(self.workload.optimizer, self.precision))

    @property
    def tiers(self) -> TierRates:
        return tier_rates(self.cluster, self.profile)

    @property
    def device(self) -> Device:
        gpu = self.cluster.gpu
        pb = precision_bytes(self.precision)
        return Device(
            gemm_peak=gpu.peak(self.precision),
            attention_peak=gpu.peak("bf16" if self.precision == "fp8" else self.precision),
            mem_bw=gpu.memory.read_bytes_per_s,
            gemm_bytes=pb.gemm_operand,
            profile=self.profile,
            act_bytes=pb.activation,
            gemm_table=self.profile.gemm_tables.get(self.precision),
            attention_table=self.profile.attention_tables.get("bf16" if self.precision == "fp8" else self.precision),
            host_synchronous=gpu.architecture.startswith("cpu"),
            gemm_scale=(1.0 if self.precision in self.profile.gemm_tables
                        else self.profile.gemm_dtype_efficiency.get(self.precision, 1.0)),
        )


@dataclass
class StepEvaluation:
    """Arrays, one entry per candidate."""

    step_time_s: np.ndarray
    time_parts_s: dict[str, np.ndarray]
    memory_parts_bytes: dict[str, np.ndarray]
    memory_bytes: np.ndarray
    capacity_bytes: float
    num_microbatches: np.ndarray
    model_flops_per_step: float
    hardware_flops_per_step: np.ndarray
    executed_flops_per_step: np.ndarray
    peak_flops: float
    num_gpus: int
    tokens_per_step: float
    #: Bytes per GPU kept in host memory and on NVMe (offloading), and each tier's share per GPU.
    host_bytes: np.ndarray | float = 0.0
    nvme_bytes: np.ndarray | float = 0.0
    host_capacity_bytes: float = float("inf")
    nvme_capacity_bytes: float = float("inf")
    #: Offloaded rows only (``detail``): busy seconds per resource over the step, row 0's
    #: timeline events (for a trace).
    offload: OffloadTimes | None = None

    @property
    def tiers_fit(self) -> np.ndarray:
        """Host memory and NVMe hold what is offloaded to them."""
        return (np.asarray(self.host_bytes) <= self.host_capacity_bytes) & (np.asarray(self.nvme_bytes) <= self.nvme_capacity_bytes)

    @property
    def fits(self) -> np.ndarray:
        return (self.memory_bytes <= self.capacity_bytes) & self.tiers_fit

    @property
    def tokens_per_s(self) -> np.ndarray:
        return self.tokens_per_step / self.step_time_s

    @property
    def model_tflops_per_gpu(self) -> np.ndarray:
        return self.model_flops_per_step / self.step_time_s / self.num_gpus / 1e12

    @property
    def mfu(self) -> np.ndarray:
        return self.model_flops_per_step / self.step_time_s / self.num_gpus / self.peak_flops

    @property
    def hfu(self) -> np.ndarray:
        return self.hardware_flops_per_step / self.step_time_s / self.num_gpus / self.peak_flops

    @property
    def hardware_utilization(self) -> np.ndarray:
        """FLOPs the kernels execute (causal attention at half cost under flash) over the peak:
        physically bounded by 1, unlike MFU/HFU, whose convention counts attention non-causally."""
        return self.executed_flops_per_step / self.step_time_s / self.num_gpus / self.peak_flops


def _pick(index: np.ndarray, first, mid, last) -> np.ndarray:
    """Per row, the value of the stage ``index`` names (0 first, 1 middle, 2 last)."""
    return np.where(index == 0, first, np.where(index == 1, mid, last))


def _average_layer(ctx: TrainContext, c: Candidates, b, s_q, s_kv) -> tuple[LayerCost, float]:
    """Cost of the average layer (dense and MoE layers mixed in proportion), and the MoE share."""
    model, dev = ctx.model, ctx.device
    flash = ctx.attention_kernel == "flash"
    dense = dense_layer_cost(model, b, s_q, s_kv, c.tp, c.sequence_parallel, dev, flash=flash, dropout=ctx.dropout)
    if not model.is_moe:
        return dense, 0.0
    moe = moe_layer_cost(model, b, s_q, s_kv, c.tp, c.sequence_parallel, c.ep, dev, flash=flash,
                         dropout=ctx.dropout, imbalance=ctx.workload.expert_imbalance)
    f = model.num_moe_layers / model.num_layers

    def mix(x, y):
        return (1 - f) * x + f * y

    from sextant.cost.layer import PassTimes

    return LayerCost(
        fwd=PassTimes(*(mix(getattr(dense.fwd, k), getattr(moe.fwd, k)) for k in ("gemm", "attention", "elementwise"))),
        bwd=PassTimes(*(mix(getattr(dense.bwd, k), getattr(moe.bwd, k)) for k in ("gemm", "attention", "elementwise"))),
        attention_core_fwd=mix(dense.attention_core_fwd, moe.attention_core_fwd),
        flops_fwd=mix(dense.flops_fwd, moe.flops_fwd),
    ), f


def _exposed(comm_s, window_s, efficiency: float) -> np.ndarray:
    """Communication time left visible when it overlaps ``window_s`` of compute."""
    return comm_s - efficiency * np.minimum(comm_s, window_s)


def _group_per_node(size, stride, gpus_per_node) -> np.ndarray:
    """Members of a process group in one node, for groups whose ranks are ``stride`` apart
    (Megatron-LM rank order tp, cp, ep/dp, pp: tp varies fastest)."""
    return np.maximum(1.0, np.minimum(np.asarray(size, float), gpus_per_node / np.asarray(stride, float)))


#: Columns that every per-layer quantity depends on; the rest only select and combine them.
LAYER_KEY = ("tp", "cp", "ep", "micro_batch", "sequence_parallel", "recompute")


def _per_layer(ctx: TrainContext, c: Candidates) -> dict[str, np.ndarray]:
    """Everything that depends only on the LAYER_KEY columns: one layer's compute, exposed
    tensor/context/expert-parallel communication and activation memory per micro-batch, and the
    embedding and output layer."""
    model, wl, fab = ctx.model, ctx.workload, comm.Fabric.of(ctx.cluster, ctx.profile)
    gpn = ctx.cluster.gpus_per_node
    h = model.hidden_size
    f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    tp, cp, ep, b = f(c.tp), f(c.cp), f(c.ep), f(c.micro_batch)
    sp, rc = c.sequence_parallel, c.recompute
    s_local = wl.seq_len / cp
    flash = ctx.attention_kernel == "flash"
    eta = ctx.overlap.efficiency

    layer, moe_share = _average_layer(ctx, c, b, s_local, wl.seq_len)
    recompute_layer = np.where(rc == 2, layer.fwd.total, np.where(rc == 1, layer.attention_core_fwd, 0.0))
    dev = ctx.device
    emb_fwd, emb_bwd = embedding_cost(model, b, s_local, dev)
    log_fwd, log_bwd = logits_cost(model, b, s_local, tp, dev)

    e = dev.act_bytes
    act_bytes = e * b * s_local * h
    tp_per_node = _group_per_node(tp, 1, gpn)
    tp_one = comm.all_reduce(act_bytes, tp, tp_per_node, fab)
    tp_total = (4.0 + np.where(rc == 2, 2.0, 0.0)) * tp_one
    # DeepSpeed partition_activations: the checkpointed input is split over the tensor-parallel
    # ranks (sequence parallelism splits it already) and all-gathered before its recomputation.
    partitioned = (ctx.partition_activations and ctx.method.backward) & (rc == 2) & ~np.asarray(sp, bool) & (tp > 1)
    tp_total = tp_total + np.where(partitioned, comm.all_gather(act_bytes, tp, tp_per_node, fab), 0.0)
    gemm_layer = layer.fwd.gemm + layer.bwd.gemm
    tp_exposed = _exposed(tp_total, gemm_layer, eta) if ctx.overlap.tp_comm else tp_total

    kv_dim = (model.num_heads if model.mla else model.num_kv_heads) * (attention_qk_dim(model) + attention_v_dim(model))
    kv_bytes = e * b * s_local * kv_dim / tp
    cp_per_node = _group_per_node(cp, tp, gpn)
    cp_comm = (cp - 1) * comm.p2p(kv_bytes, cp_per_node < cp, fab) * 3.0  # fwd: K,V; bwd: K,V, dK,dV
    cp_exposed = np.where(cp > 1, _exposed(cp_comm, layer.fwd.attention + layer.bwd.attention, eta), 0.0)

    if model.is_moe:
        a2a_bytes = e * b * s_local * h * model.moe.top_k / np.where(sp, tp, 1.0)
        ep_per_node = _group_per_node(ep, tp * cp, gpn)
        # Dispatch and combine in the forward and the backward, and again in a recomputed forward.
        a2a_count = 4.0 + np.where(rc == 2, 2.0, 0.0)
        ep_comm = a2a_count * comm.all_to_all(a2a_bytes * ctx.workload.expert_imbalance, ep, ep_per_node, fab) * moe_share
    else:
        ep_comm = np.zeros_like(tp)

    kw = dict(flash=flash, dropout=ctx.dropout, act_bytes=e, partitioned=partitioned)
    act_layer = layer_activation_bytes(model, b, s_local, tp, sp, rc, **kw)
    act_extra = layer_activation_peak_extra(model, b, s_local, tp, sp, rc, **kw)
    if model.is_moe:
        moe_act = layer_activation_bytes(model, b, s_local, tp, sp, rc, moe_layer=True, **kw)
        act_layer = (1 - moe_share) * act_layer + moe_share * moe_act
        act_extra = np.maximum(act_extra, layer_activation_peak_extra(
            model, b, s_local, tp, sp, rc, moe_layer=True, **kw))

    parts = {
        "fwd_gemm": layer.fwd.gemm, "fwd_attention": layer.fwd.attention, "fwd_elementwise": layer.fwd.elementwise,
        "bwd_gemm": layer.bwd.gemm, "bwd_attention": layer.bwd.attention, "bwd_elementwise": layer.bwd.elementwise,
        "recompute": recompute_layer, "emb": emb_fwd + emb_bwd, "logits": log_fwd + log_bwd,
        "tp_exposed": tp_exposed, "cp_exposed": cp_exposed, "ep_comm": ep_comm,
        "act_layer": act_layer, "act_extra": act_extra,
        "logits_act": logits_activation_bytes(model, b, s_local, tp, e),
    }
    apply_method(ctx, parts, tp, log_fwd, emb_fwd, kw, b, s_local, sp, rc)
    fwd = parts["fwd_gemm"] + parts["fwd_attention"] + parts["fwd_elementwise"]
    bwd = parts["bwd_gemm"] + parts["bwd_attention"] + parts["bwd_elementwise"]
    parts.update(fwd=fwd, bwd=bwd,
                 time=fwd + bwd + parts["recompute"] + parts["tp_exposed"] + parts["cp_exposed"] + parts["ep_comm"])
    return parts


def _unique_rows(c: Candidates, columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first row of each distinct combination of ``columns``, and for every row
    the index of its combination (so ``values[inverse]`` expands per-combination values)."""
    key = np.zeros(len(c), dtype=np.int64)
    size = 1
    for name in columns:
        col = getattr(c, name).astype(np.int64)
        # Rank of each value among the column's distinct values (a lookup table over 0..max).
        present = np.zeros(int(col.max()) + 1, dtype=bool)
        present[col] = True
        rank = np.cumsum(present) - 1
        key = key * int(rank[-1] + 1) + rank[col]
        size *= int(rank[-1] + 1)
    if size > 1 << 22:  # sparse key space: sort
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return first, inverse.ravel()
    # Dense key space: a lookup table, O(rows). Writing the row numbers in reverse order leaves
    # each key's first row in the table.
    first_of_key = np.full(size, -1, dtype=np.int64)
    first_of_key[key[::-1]] = np.arange(len(key) - 1, -1, -1)
    present = np.flatnonzero(first_of_key >= 0)
    slot = np.full(size, -1, dtype=np.int64)
    slot[present] = np.arange(len(present))
    return first_of_key[present], slot[key]


def evaluate(ctx: TrainContext, c: Candidates, *, detail: bool = True) -> StepEvaluation:  # noqa: C901
    """Step time, memory and FLOPs of every row of ``c``. ``detail=False`` skips the per-part
    time and memory breakdowns (empty dicts) for searches that only rank; the totals are the same
    expressions either way."""
    model, cluster, prof, wl = ctx.model, ctx.cluster, ctx.profile, ctx.workload
    fab = comm.Fabric.of(cluster, prof)
    gpn = cluster.gpus_per_node
    h = model.hidden_size
    f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    tp, pp, cp, ep, dp, vpp, b = f(c.tp), f(c.pp), f(c.cp), f(c.ep), f(c.dp), f(c.vpp), f(c.micro_batch)
    rc = c.recompute
    eta = ctx.overlap.efficiency
    m = wl.global_batch / (dp * b)
    s_local = wl.seq_len / cp

    # ---- per layer: computed once per distinct (tp, cp, ep, micro_batch, sp, recompute) --------
    first, inverse = _unique_rows(c, LAYER_KEY)
    per_layer = {k: np.broadcast_to(v, first.shape)[inverse] for k, v in _per_layer(ctx, c.take(first)).items()}
    layer_time = per_layer["time"] + ctx.layer_pass_overhead_s
    emb_both, log_both = per_layer["emb"], per_layer["logits"]
    act_bytes = ctx.device.act_bytes * b * s_local * h

    # ---- stages and pipeline ----------------------------------------------------------------
    n_first, n_mid, n_last = stage_layers(model.num_layers, pp)
    single = pp == 1
    t_first = n_first * layer_time + emb_both + np.where(single, log_both, 0.0)
    t_mid = n_mid * layer_time
    t_last = n_last * layer_time + log_both + np.where(single, emb_both, 0.0)
    stage_t = (t_first, t_mid, t_last)
    t_max = np.maximum(np.maximum(t_first, t_mid), t_last)
    t_sum = model.num_layers * layer_time + emb_both + log_both

    crosses = (tp * cp * dp) >= gpn
    p2p_one = comm.p2p(act_bytes / tp, crosses, fab)
    p2p_per_mb = np.where(single, 0.0, 2.0 * vpp * p2p_one)
    p2p_exposed_mb = 0.0 * p2p_per_mb if ctx.overlap.pp_p2p else p2p_per_mb
    pipe = schedule_time(t_max + p2p_exposed_mb, t_sum + 2.0 * (pp - 1) * p2p_one, m, vpp)

    # ---- parameters per stage, data parallelism and the optimizer ---------------------------
    counts = count_params(model)
    moe_layers = counts.num_moe_layers
    nonexpert_layer = ((model.num_layers - moe_layers) * counts.dense_layer
                       + moe_layers * (counts.moe_layer_total - counts.num_experts * counts.moe_expert)) / model.num_layers
    expert_layer = moe_layers * counts.num_experts * counts.moe_expert / model.num_layers
    emb_params = (counts.embedding + counts.position_embedding) / tp
    out_params = np.where(single & (counts.output == 0), 0.0, model.vocab_size * h / tp) + counts.final_norm
    ne_first = n_first * nonexpert_layer / tp + emb_params + np.where(single, out_params, 0.0)
    ne_mid = n_mid * nonexpert_layer / tp
    ne_last = n_last * nonexpert_layer / tp + out_params + np.where(single, emb_params, 0.0)
    ex_first, ex_mid, ex_last = (n * expert_layer / (tp * ep) for n in (n_first, n_mid, n_last))

    dp_group = dp * cp
    edp_group = np.maximum(dp_group / ep, 1.0)
    dp_per_node = _group_per_node(dp_group, tp, gpn)
    edp_per_node = _group_per_node(edp_group, tp * ep, gpn)
    gb = grad_bytes(ctx.precision)
    flat = ctx.dp_collective == "flat_ring"
    zero = c.zero

    # One cost per group, applied to every buffer size below (collectives are affine in size).
    dp_ar = comm.all_reduce_cost(dp_group, dp_per_node, fab, flat=flat)
    dp_ag = comm.all_gather_cost(dp_group, dp_per_node, fab, flat=flat)
    if model.is_moe:
        edp_ar = comm.all_reduce_cost(edp_group, edp_per_node, fab, flat=flat)
        edp_ag = comm.all_gather_cost(edp_group, edp_per_node, fab, flat=flat)

    def dp_time(ne, ex, compute_mb, fwd_mb, bwd_mb):
        ar, rs, ag = dp_ar(ne * gb), dp_ag(ne * gb), dp_ag(ne * 2.0)
        if model.is_moe:
            ar, rs, ag = ar + edp_ar(ex * gb), rs + edp_ag(ex * gb), ag + edp_ag(ex * 2.0)
        grad_sync = np.where(zero == 0, ar, rs)
        grad_exposed = _exposed(grad_sync, bwd_mb, eta) if ctx.overlap.dp_grad_reduce else grad_sync
        gather_exposed = _exposed(ag, fwd_mb, eta) if ctx.overlap.dp_param_gather else ag
        zero12 = grad_exposed + np.where(zero >= 1, gather_exposed, 0.0)
        # ZeRO-3: per micro-batch, gathers for forward, (recomputed forward,) backward, and a
        # reduce-scatter of gradients; prefetching overlaps them with that micro-batch's compute.
        z3_mb = ag * (2.0 + np.where(rc == 2, 1.0, 0.0)) + rs
        z3 = m * (_exposed(z3_mb, compute_mb, eta) if ctx.overlap.dp_param_gather else z3_mb)
        return np.where(zero >= 3, z3, zero12)

    fwd_l, bwd_l = per_layer["fwd"], per_layer["bwd"]
    fwd_parts = [n_first * fwd_l, n_mid * fwd_l, n_last * fwd_l]
    bwd_parts = [n_first * bwd_l, n_mid * bwd_l, n_last * bwd_l]
    dp_first = dp_time(ne_first, ex_first, t_first, fwd_parts[0], bwd_parts[0])
    dp_mid = np.where(pp > 2, dp_time(ne_mid, ex_mid, t_mid, fwd_parts[1], bwd_parts[1]), 0.0)
    dp_last = dp_time(ne_last, ex_last, t_last, fwd_parts[2], bwd_parts[2])

    def optimizer_time(ne, ex):
        if wl.method == "zo":  # the update runs inside each layer's forward (see _apply_method)
            return np.zeros_like(np.asarray(ne, float))
        trained = ctx.method.trainable_fraction
        local = (ne / np.where(zero >= 1, dp_group, 1.0) + ex / np.where(zero >= 1, edp_group, 1.0)) * trained
        if prof.optimizer_params_per_s is not None and wl.optimizer in ("adam", "adamw"):
            return local / prof.optimizer_params_per_s
        return memory_bound_time(local * optimizer_step_bytes(wl.optimizer, ctx.precision), mem_bw=ctx.device.mem_bw,
                                 profile=prof, kernels=8)

    opt_first, opt_mid, opt_last = optimizer_time(ne_first, ex_first), optimizer_time(ne_mid, ex_mid), optimizer_time(ne_last, ex_last)
    tail = (dp_first + opt_first, dp_mid + opt_mid, dp_last + opt_last)
    # Tied embeddings with pp > 1: the first and last stage all-reduce the embedding gradient.
    emb_sync = np.where(single | (counts.output != 0), 0.0,
                        comm.p2p(model.vocab_size * h / tp * gb, crosses, fab) * 2.0)

    step = pipe + np.maximum(np.maximum(tail[0], tail[1]), tail[2]) + emb_sync

    # ---- offloading: rows whose step runs on the event timeline of train/offload.py ----------
    offloaded = np.flatnonzero(c.offloads)
    off_times = None
    if offloaded.size:
        off_times = offload_times(ctx, c, offloaded, per_layer, emb_both, log_both, ne_first + ex_first,
                             ne_first / np.where(zero >= 1, dp_group, 1.0) + ex_first / np.where(zero >= 1, edp_group, 1.0),
                             opt_first, m, record=detail and len(c) == 1)
        step = step.copy()
        step[offloaded] = (m[offloaded] * off_times.microbatch_s + off_times.optimizer_s
                           + dp_first[offloaded] + np.broadcast_to(emb_sync, step.shape)[offloaded])

    parts: dict[str, np.ndarray] = {}
    if detail:
        # ---- time breakdown (sums to the step time) ---------------------------------------------
        slowest = np.argmax(np.stack(np.broadcast_arrays(*stage_t)), axis=0)
        n_slow = _pick(slowest, n_first, n_mid, n_last)
        has_emb = (slowest == 0) | single
        has_log = (slowest == 2) | single
        parts = {
            "gemm": m * n_slow * (per_layer["fwd_gemm"] + per_layer["bwd_gemm"]),
            "attention": m * n_slow * (per_layer["fwd_attention"] + per_layer["bwd_attention"]),
            "elementwise": m * n_slow * (per_layer["fwd_elementwise"] + per_layer["bwd_elementwise"]),
            "recompute": m * n_slow * per_layer["recompute"],
            "embedding_logits": m * (np.where(has_emb, emb_both, 0.0) + np.where(has_log, log_both, 0.0)),
            "tp_comm": m * n_slow * per_layer["tp_exposed"],
            "cp_comm": m * n_slow * per_layer["cp_exposed"],
            "ep_comm": m * n_slow * per_layer["ep_comm"],
            "pp_p2p": m * p2p_exposed_mb,
            "framework_overhead": m * n_slow * ctx.layer_pass_overhead_s,
        }
        parts["pipeline_bubble"] = pipe - sum(parts.values())
        tail_stage = np.argmax(np.stack(np.broadcast_arrays(*tail)), axis=0)
        parts["dp_comm"] = _pick(tail_stage, dp_first, dp_mid, dp_last) + emb_sync
        parts["optimizer"] = _pick(tail_stage, opt_first, opt_mid, opt_last)
        parts["offload_wait"] = np.zeros_like(step)
        if off_times is not None:
            # The GPU's own work is the same; what the timeline adds is the GPU waiting for
            # transfers within micro-batches, and the optimizer phase as the timeline ran it.
            i = offloaded
            parts = {k: np.array(np.broadcast_to(v, step.shape), dtype=float) for k, v in parts.items()}
            parts["offload_wait"][i] = m[i] * (off_times.microbatch_s - off_times.busy_microbatch_s["gpu"])
            parts["optimizer"][i] = off_times.optimizer_s
            parts["dp_comm"][i] = dp_first[i] + np.broadcast_to(emb_sync, step.shape)[i]
            parts["pipeline_bubble"][i] = 0.0

    # ---- memory per GPU, on the stage that needs the most ---------------------------------------
    act_layer, act_extra, logits_act = per_layer["act_layer"], per_layer["act_extra"], per_layer["logits_act"]

    if ctx.zero3_gather_unit == "module":
        gather_unit_params = largest_matrix_params(model) / tp
    else:
        # Experts are sharded (and gathered) only over their expert-data-parallel group.
        gather_unit_params = nonexpert_layer / tp + np.where(edp_group > 1, expert_layer / (tp * ep), 0.0)

    opt_off, par_off, act_off = c.offload_optimizer, c.offload_params, c.offload_activations
    mc = ctx.method
    weight_16 = precision_bytes(ctx.precision).weight
    tiers = {"host": np.zeros(len(c)), "nvme": np.zeros(len(c))}

    def stage_memory(ne, ex, n_layers, stage_index, with_logits, holds_tiers=False):
        copy = {"fp32_grad_copy": ctx.fp32_grad_copy, "bf16_grad_copy": ctx.bf16_grad_copy}
        w_ne, g_ne, o_ne = model_state_bytes(ne, dp_group, zero, ctx.precision, wl.optimizer, **copy)
        w_ex, g_ex, o_ex = (model_state_bytes(ex, edp_group, zero, ctx.precision, wl.optimizer, **copy)
                            if model.is_moe else (0.0, 0.0, 0.0))
        in_flight = pipeline_in_flight(pp, vpp, m, c.schedule, stage_index)
        kept = n_layers * in_flight * act_layer
        acts = kept + act_extra + np.where(with_logits, logits_act, 0.0)
        z3_buffers = np.where(zero >= 3, 2.0 * 2.0 * gather_unit_params, 0.0)
        weights, grads, optim = w_ne + w_ex, g_ne + g_ex, o_ne + o_ex
        if wl.method != "full":
            params = ne + ex
            weights = params * mc.weight_bytes / np.where(zero >= 3, dp_group, 1.0)
            grads = (params / np.maximum(n_layers, 1) * weight_16 if wl.method == "galore"  # layer-wise updates
                     else params * mc.grad_bytes / np.where(zero >= 2, dp_group, 1.0))
            optim = params * mc.optimizer_bytes / np.where(zero >= 1, dp_group, 1.0)
        if offloaded.size:
            # What leaves the GPU goes to its tier (per GPU); the GPU keeps staging buffers: two
            # gather units of 16-bit gradients (a layer, or one weight matrix as DeepSpeed
            # reduces them), two layers of activations each way.
            layer_grads = BUFFERS * gather_unit_params * weight_16 * mc.trainable_fraction
            if holds_tiers:
                for code, tier_bytes in ((opt_off, optim), (par_off, weights), (act_off, kept)):
                    tiers["host"] += np.where((code == 1) | (code == 3), tier_bytes, 0.0)
                    tiers["nvme"] += np.where(code == 2, tier_bytes, 0.0)
                tiers["host"] += np.where(opt_off > 0, grads, 0.0)  # gradients accumulate in host memory
            optim = np.where(opt_off > 0, 0.0, optim)
            grads = np.where(opt_off > 0, layer_grads, grads)
            weights = np.where(par_off > 0, 0.0, weights)
            acts = np.where(act_off > 0, 2 * BUFFERS * act_layer + act_extra + np.where(with_logits, logits_act, 0.0), acts)
        tensors = weights + grads + optim + acts + z3_buffers
        overhead = ctx.allocator_overhead * tensors + ctx.runtime_reserved_bytes
        return {"weights": weights, "gradients": grads, "optimizer": optim,
                "activations": acts, "comm_buffers": z3_buffers, "overhead": overhead}

    mems = [
        stage_memory(ne_first, ex_first, n_first, 0.0, single, holds_tiers=True),  # offloaded rows: pp = 1
        stage_memory(ne_mid, ex_mid, n_mid, 1.0, np.zeros_like(single)),
        stage_memory(ne_last, ex_last, n_last, pp - 1, np.ones_like(single)),
    ]
    totals = [sum(mm.values()) for mm in mems]
    totals[1] = np.where(pp > 2, totals[1], 0.0)
    memory_bytes = np.maximum(np.maximum(totals[0], totals[1]), totals[2])
    memory_parts: dict[str, np.ndarray] = {}
    if detail:
        peak_stage = np.argmax(np.stack(np.broadcast_arrays(*totals)), axis=0)
        memory_parts = {k: _pick(peak_stage, mems[0][k], mems[1][k], mems[2][k]) for k in MEMORY_PARTS}

    rates = ctx.tiers if offloaded.size else None
    tier_capacity = (rates.host_capacity, rates.nvme_capacity) if rates else (float("inf"), float("inf"))

    # ---- FLOPs ---------------------------------------------------------------------------
    tokens = float(wl.global_batch) * wl.seq_len
    model_flops = model_flops_per_token(model, wl.seq_len) * tokens
    attn_fwd_per_token = 2.0 * model.num_layers * model.num_heads * (attention_qk_dim(model) + attention_v_dim(model)) * wl.seq_len
    layers_fwd_per_token = 2.0 * counts.layers_active + attn_fwd_per_token
    recompute_flops = np.where(rc == 2, layers_fwd_per_token, np.where(rc == 1, attn_fwd_per_token, 0.0)) * tokens
    # What the kernels run: causal block skipping and FlashAttention's 2.5x backward under flash;
    # the full score matrix, forward and twice in the backward, when unfused.
    flash = ctx.attention_kernel == "flash"
    attn_exec_fwd = attn_fwd_per_token * (CAUSAL_FRACTION if flash else 1.0)
    attn_exec = attn_exec_fwd * (1.0 + (FLASH_BWD_FLOP_RATIO if flash else 2.0))
    matmul_per_token = model_flops_per_token(model, wl.seq_len) - 3.0 * attn_fwd_per_token
    executed = (matmul_per_token + attn_exec + np.where(
        rc == 2, 2.0 * counts.layers_active + attn_exec_fwd, np.where(rc == 1, attn_exec_fwd, 0.0))) * tokens

    return StepEvaluation(
        step_time_s=step,
        time_parts_s=parts,
        memory_parts_bytes=memory_parts,
        memory_bytes=memory_bytes,
        capacity_bytes=cluster.gpu.memory.capacity_bytes,
        num_microbatches=m,
        model_flops_per_step=model_flops,
        hardware_flops_per_step=model_flops + recompute_flops,
        executed_flops_per_step=executed,
        peak_flops=cluster.gpu.peak(ctx.precision),
        num_gpus=cluster.num_gpus,
        tokens_per_step=tokens,
        host_bytes=tiers["host"],
        nvme_bytes=tiers["nvme"],
        host_capacity_bytes=tier_capacity[0],
        nvme_capacity_bytes=tier_capacity[1],
        offload=off_times,
    )

