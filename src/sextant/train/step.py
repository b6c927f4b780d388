"""The training step: compute, communication, pipeline schedule, optimizer and memory per GPU,
assembled from the cost functions of :mod:`sextant.cost`.

One function, :func:`evaluate`, takes a :class:`Candidates` table and returns a
:class:`StepEvaluation` of arrays. ``predict`` calls it with one row, the planner with many. The
formulas live in cost/ (each module cites its sources): a layer's kernels (``cost.layer``), its
tensor/context/expert-parallel communication (``cost.parallel``), data-parallel and ZeRO
collectives (``cost.data_parallel``), the optimizer step (``cost.optimizer``), memory
(``cost.memory``) and FLOPs (``cost.flops``). Here they are combined: what overlaps what, which
stage is slowest, which needs the most memory. The ``Overlap`` flags of the strategy say what the
framework hides behind compute:

- tensor-parallel collectives behind the layer's GEMMs (``tp_comm``: Transformer Engine
  userbuffers; Wang et al. ASPLOS 2023);
- ring-attention exchanges behind the attention blocks (always; only the excess shows);
- expert-parallel all-to-alls: exposed;
- pipeline sends and receives: exposed per micro-batch unless ``pp_p2p``;
- gradient reduction behind the last backward (``dp_grad_reduce``), ZeRO-1/2 parameter gathers
  behind the next forward and ZeRO-3's per micro-batch (``dp_param_gather``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.cost import comm
from sextant.cost.data_parallel import (
    DataParallelCollectives,
    tied_embedding_sync,
    zero3_buffer_bytes,
    zero3_gather_unit_params,
    zero3_pipeline_resident_bytes,
)
from sextant.cost.flops import step_flops
from sextant.cost.layer import average_layer_cost, embedding_cost, logits_cost, routed_rows, with_fp8_casts
from sextant.cost.memory import (
    FRAGMENTATION_AT_CAPACITY,
    OFFLOAD_BUFFERS,
    allocator_fragmentation,
    layer_activation_bytes,
    layer_activation_peak_extra,
    logits_activation_bytes,
    loss_transient_bytes,
    method_state_bytes,
    model_state_bytes,
    offload_tier_bytes,
    offloaded_gpu_states,
    optimizer_step_excess,
    pipeline_in_flight,
    stage_activations,
)
from sextant.cost.optimizer import optimizer_step_time
from sextant.cost.parallel import cp_layer_comm, ep_layer_comm, pp_p2p, tp_layer_comm
from sextant.cost.params import StageParams, stage_params
from sextant.resolve.train import TrainContext
from sextant.train.candidates import Candidates
from sextant.train.methods import apply_method
from sextant.train.offload_timeline import OffloadTimes, offload_times
from sextant.train.pipeline import schedule_time, stage_layers

MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "activation_temporaries", "comm_buffers",
                "optimizer_step", "fragmentation", "runtime")
#: The parts each peak counter counts: what the tensors need at the worst moment
#: (``torch.cuda.max_memory_allocated``), what the caching allocator holds
#: (``max_memory_reserved``), and what the device shows (nvidia-smi: CUDA context, NCCL).
ALLOCATED_PARTS = MEMORY_PARTS[:7]
PEAK_COUNTERS = {"allocated": ALLOCATED_PARTS, "reserved": MEMORY_PARTS[:8], "device": MEMORY_PARTS}
FULL_RECOMPUTE, SELECTIVE_RECOMPUTE = 2, 1


@dataclass
class StepEvaluation:
    """Arrays, one entry per candidate."""

    step_time_s: np.ndarray
    time_parts_s: dict[str, np.ndarray]
    memory_parts_bytes: dict[str, np.ndarray]
    memory_bytes: np.ndarray
    #: What must fit in the GPU (fits, the planner): the tensors, the fragmentation the allocator
    #: keeps when memory is short (FRAGMENTATION_AT_CAPACITY at most) and the runtime.
    required_bytes: np.ndarray
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
        return (self.required_bytes <= self.capacity_bytes) & self.tiers_fit

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


def _max3(values: tuple) -> np.ndarray:
    return np.maximum(np.maximum(values[0], values[1]), values[2])


#: Columns that every per-layer quantity depends on; the rest only select and combine them.
LAYER_KEY = ("tp", "cp", "ep", "etp", "micro_batch", "sequence_parallel", "recompute")


def _per_layer(ctx: TrainContext, c: Candidates) -> dict[str, np.ndarray]:
    """Everything that depends only on the LAYER_KEY columns: one layer's compute, exposed
    tensor/context/expert-parallel communication and activation memory per micro-batch, and the
    embedding and output layer."""
    model, wl, fab, dev = ctx.model, ctx.workload, ctx.fabric, ctx.device
    gpn = ctx.cluster.gpus_per_node
    f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    tp, cp, ep, etp, b = f(c.tp), f(c.cp), f(c.ep), f(c.etp), f(c.micro_batch)
    sp, rc = c.sequence_parallel, c.recompute
    s_local = wl.seq_len / cp
    flash = ctx.attention_kernel == "flash"
    eta = ctx.overlap.efficiency

    layer, moe_share = average_layer_cost(model, b, s_local, wl.seq_len, tp, sp, ep, dev, flash=flash,
                                          dropout=ctx.dropout, imbalance=wl.expert_imbalance,
                                          fused=ctx.fused_projections, etp=etp)
    if ctx.precision == "fp8":
        routed = routed_rows(b * s_local, model, tp, etp, wl.expert_imbalance) if model.is_moe else None
        layer = with_fp8_casts(layer, model, b, s_local, tp, dev, moe_share=moe_share, routed_tokens=routed, etp=etp)
    recompute_layer = np.where(rc == FULL_RECOMPUTE, layer.fwd.total,
                               np.where(rc == SELECTIVE_RECOMPUTE, layer.selective_recompute_fwd(ctx.selective_recompute),
                                        0.0))
    emb_fwd, emb_bwd = embedding_cost(model, b, s_local, dev)
    log_fwd, log_bwd = logits_cost(model, b, s_local, tp, dev)

    e = dev.act_bytes
    act_bytes = e * b * s_local * model.hidden_size
    # DeepSpeed partition_activations: the checkpointed input is split over the tensor-parallel
    # ranks (sequence parallelism splits it already) and all-gathered before its recomputation.
    partitioned = ((ctx.partition_activations and ctx.method.backward) & (rc == FULL_RECOMPUTE)
                   & ~np.asarray(sp, bool) & (tp > 1))
    tp_total = tp_layer_comm(act_bytes, tp, gpn, fab, rc, partitioned)
    tp_exposed = comm.exposed(tp_total, layer.fwd.gemm + layer.bwd.gemm, eta) if ctx.overlap.tp_comm else tp_total
    cp_total = cp_layer_comm(model, b, s_local, tp, cp, gpn, fab, e)
    cp_exposed = np.where(cp > 1, comm.exposed(cp_total, layer.fwd.attention + layer.bwd.attention, eta), 0.0)
    ep_comm = (ep_layer_comm(model, act_bytes, tp, ep, etp, sp, gpn, fab, rc, wl.expert_imbalance,
                             ctx.moe_dispatcher) * moe_share
               if model.is_moe else np.zeros_like(tp))
    if ctx.overlap.ep_comm:
        ep_comm = comm.exposed(ep_comm, layer.fwd.total + layer.bwd.total, eta)

    kw = dict(flash=flash, dropout=ctx.dropout, act_bytes=e, partitioned=partitioned,
              selective=ctx.selective_recompute, etp=etp,
              fp8_inputs=ctx.precision == "fp8" and ctx.fp8_saved_inputs == "fp8")
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
        "logits_act": logits_activation_bytes(model, b, s_local, tp, e, ctx.loss_kernel),
        "loss_extra": loss_transient_bytes(model, b, s_local, tp, ctx.loss_kernel),
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


@dataclass(frozen=True)
class _Rows:
    """The columns of a table as floats, and what every part of the step derives from them."""

    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    dp: np.ndarray
    vpp: np.ndarray
    m: np.ndarray  # micro-batches per step
    single: np.ndarray  # one pipeline stage
    layers: tuple[np.ndarray, np.ndarray, np.ndarray]  # on the first, fullest middle and last stage
    act_bytes: np.ndarray  # one layer's input activations of a micro-batch
    crosses: np.ndarray  # a pipeline neighbour (and the tied embedding's peer) on another node
    dp_group: np.ndarray
    edp_group: np.ndarray

    @classmethod
    def of(cls, ctx: TrainContext, c: Candidates) -> _Rows:
        f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
        tp, pp, cp, ep, dp, vpp, b = f(c.tp), f(c.pp), f(c.cp), f(c.ep), f(c.dp), f(c.vpp), f(c.micro_batch)
        etp = f(c.etp)
        wl, gpn = ctx.workload, ctx.cluster.gpus_per_node
        dp_group = dp * cp
        # The expert layers fold etp x ep x expert-dp over the tp x cp x dp ranks of a stage.
        edp_group = np.maximum(tp * cp * dp / (etp * ep), 1.0)
        return cls(tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, dp=dp, vpp=vpp, m=wl.global_batch / (dp * b),
                   single=pp == 1, layers=stage_layers(ctx.model.num_layers, pp),
                   act_bytes=ctx.device.act_bytes * b * (wl.seq_len / cp) * ctx.model.hidden_size,
                   crosses=(tp * cp * dp) >= gpn, dp_group=dp_group, edp_group=edp_group)


@dataclass(frozen=True)
class _Pipeline:
    """Per stage (first, middle, last): compute per micro-batch and its forward and backward;
    the pipeline's time over the step, and the exposed sends of one micro-batch."""

    stage_s: tuple
    fwd_s: tuple
    bwd_s: tuple
    time_s: np.ndarray
    p2p_exposed_s: np.ndarray


def _pipeline(ctx: TrainContext, x: _Rows, per_layer: dict, layer_time: np.ndarray) -> _Pipeline:
    """Stage times and the pipeline schedule (``train/pipeline.py``), with the sends between stages."""
    n_first, n_mid, n_last = x.layers
    emb, log, single = per_layer["emb"], per_layer["logits"], x.single
    stage_s = (n_first * layer_time + emb + np.where(single, log, 0.0), n_mid * layer_time,
               n_last * layer_time + log + np.where(single, emb, 0.0))
    t_sum = ctx.model.num_layers * layer_time + emb + log
    p2p_one = pp_p2p(x.act_bytes, x.tp, x.crosses, ctx.fabric)
    p2p_per_mb = np.where(single, 0.0, 2.0 * x.vpp * p2p_one)
    p2p_exposed = 0.0 * p2p_per_mb if ctx.overlap.pp_p2p else p2p_per_mb
    pipe = schedule_time(_max3(stage_s) + p2p_exposed, t_sum + 2.0 * (x.pp - 1) * p2p_one, x.m, x.vpp)
    fwd_l, bwd_l = per_layer["fwd"], per_layer["bwd"]
    return _Pipeline(stage_s=stage_s, fwd_s=tuple(n * fwd_l for n in x.layers),
                     bwd_s=tuple(n * bwd_l for n in x.layers), time_s=pipe, p2p_exposed_s=p2p_exposed)


def _tail(ctx: TrainContext, c: Candidates, x: _Rows, pipe: _Pipeline, params: StageParams) -> tuple[tuple, tuple]:
    """Per stage, the exposed data-parallel communication and the optimizer step of a step."""
    pb, wl = ctx.precision_bytes, ctx.workload
    groups = (x.dp_group, comm.group_per_node(x.dp_group, x.tp, ctx.cluster.gpus_per_node),
              x.edp_group, comm.group_per_node(x.edp_group, x.etp * x.ep, ctx.cluster.gpus_per_node))
    coll = DataParallelCollectives.of(groups, ctx.fabric, flat=ctx.dp_collective == "flat_ring",
                                      moe=ctx.model.is_moe, grad_bytes=pb.grad, weight_bytes=pb.weight)
    zero = c.zero

    def dp_time(i: int) -> np.ndarray:
        return coll.step_time(params.nonexpert[i], params.expert[i], zero=zero, recompute=c.recompute,
                              microbatches=x.m, fwd_s=pipe.fwd_s[i], bwd_s=pipe.bwd_s[i], compute_s=pipe.stage_s[i],
                              overlap=ctx.overlap)

    def optimizer_time(i: int) -> np.ndarray:
        ne, ex = params.nonexpert[i], params.expert[i]
        if wl.method == "zo":  # the update runs inside each layer's forward (see train/methods.py)
            return np.zeros_like(np.asarray(ne, float))
        local = (ne / np.where(zero >= 1, x.dp_group, 1.0) + ex / np.where(zero >= 1, x.edp_group, 1.0)) \
            * ctx.method.trainable_fraction
        return optimizer_step_time(local, wl.optimizer, ctx.precision, ctx.profile, ctx.device.mem_bw)

    dp = (dp_time(0), np.where(x.pp > 2, dp_time(1), 0.0), dp_time(2))
    return dp, (optimizer_time(0), optimizer_time(1), optimizer_time(2))


def _time_parts(ctx: TrainContext, x: _Rows, per_layer: dict, pipe: _Pipeline, dp: tuple, opt: tuple,
                emb_sync) -> dict[str, np.ndarray]:
    """The breakdown of the step time of the slowest stage (sums to the step time)."""
    m = x.m
    n_first, n_mid, n_last = x.layers
    slowest = np.argmax(np.stack(np.broadcast_arrays(*pipe.stage_s)), axis=0)
    n_slow = _pick(slowest, n_first, n_mid, n_last)
    has_emb = (slowest == 0) | x.single
    has_log = (slowest == 2) | x.single
    pl = per_layer
    parts = {
        "gemm": m * n_slow * (pl["fwd_gemm"] + pl["bwd_gemm"]),
        "attention": m * n_slow * (pl["fwd_attention"] + pl["bwd_attention"]),
        "elementwise": m * n_slow * (pl["fwd_elementwise"] + pl["bwd_elementwise"]),
        "recompute": m * n_slow * pl["recompute"],
        "embedding_logits": m * (np.where(has_emb, pl["emb"], 0.0) + np.where(has_log, pl["logits"], 0.0)),
        "tp_comm": m * n_slow * pl["tp_exposed"],
        "cp_comm": m * n_slow * pl["cp_exposed"],
        "ep_comm": m * n_slow * pl["ep_comm"],
        "pp_p2p": m * pipe.p2p_exposed_s,
        "framework_overhead": m * n_slow * ctx.costs.layer_pass_overhead_s,
    }
    parts["pipeline_bubble"] = pipe.time_s - sum(parts.values())
    tail = tuple(d + o for d, o in zip(dp, opt))
    tail_stage = np.argmax(np.stack(np.broadcast_arrays(*tail)), axis=0)
    parts["dp_comm"] = _pick(tail_stage, *dp) + emb_sync
    parts["optimizer"] = _pick(tail_stage, *opt)
    return parts


def _offloaded_parts(parts: dict, step: np.ndarray, rows: np.ndarray, off: OffloadTimes, m, dp_first,
                     emb_sync) -> dict[str, np.ndarray]:
    """The breakdown of offloaded rows: the GPU's own work is the same; what the timeline adds is
    the GPU waiting for transfers within micro-batches, and the optimizer phase as it ran."""
    parts = {k: np.array(np.broadcast_to(v, step.shape), dtype=float) for k, v in parts.items()}
    parts["offload_wait"][rows] = m[rows] * (off.microbatch_s - off.busy_microbatch_s["gpu"])
    parts["optimizer"][rows] = off.optimizer_s
    parts["dp_comm"][rows] = dp_first[rows] + np.broadcast_to(emb_sync, step.shape)[rows]
    parts["pipeline_bubble"][rows] = 0.0
    return parts


def _stage_memory(ctx: TrainContext, c: Candidates, x: _Rows, per_layer: dict, params: StageParams,
                  gather_unit_params, stage: int, offloaded: bool) -> tuple[dict[str, np.ndarray], tuple]:
    """Memory per GPU of one stage (0 first, 1 middle, 2 last) by part, and (host, NVMe) bytes
    of what it offloads (the first stage's: offloaded rows have one stage)."""
    wl, model, zero, mc = ctx.workload, ctx.model, c.zero, ctx.method
    ne, ex, n_layers = params.nonexpert[stage], params.expert[stage], x.layers[stage]
    # The output layer's activations: on the last stage, and on the first when it is the only one.
    with_logits = (x.single, np.zeros_like(x.single), np.ones_like(x.single))[stage]
    copies = {"fp32_grad_copy": ctx.fp32_grad_copy, "bf16_grad_copy": ctx.bf16_grad_copy,
              "grad_bytes": ctx.precision_bytes.grad}
    weights, grads, optim = model_state_bytes(ne, x.dp_group, zero, ctx.precision, wl.optimizer, **copies)
    if model.is_moe:
        w_ex, g_ex, o_ex = model_state_bytes(ex, x.edp_group, zero, ctx.precision, wl.optimizer, **copies)
        weights, grads, optim = weights + w_ex, grads + g_ex, optim + o_ex
    if wl.method != "full":
        weights, grads, optim = method_state_bytes(ne + ex, n_layers, x.dp_group, zero, mc,
                                                   galore=wl.method == "galore", weight_bytes=ctx.precision_bytes.weight)
    stage_index = float(stage) if stage < 2 else x.pp - 1
    in_flight = pipeline_in_flight(x.pp, x.vpp, x.m, c.schedule, stage_index)
    act_layer, act_extra, logits_act = per_layer["act_layer"], per_layer["act_extra"], per_layer["logits_act"]
    kept, acts, temporaries = stage_activations(n_layers, in_flight, act_layer, act_extra, logits_act, with_logits,
                                                per_layer["loss_extra"])
    tiers: tuple = (0.0, 0.0)
    if offloaded:
        codes = (c.offload_optimizer, c.offload_params, c.offload_activations)
        if stage == 0:
            tiers = offload_tier_bytes(weights, grads, optim, kept, codes)
        staged_grads = OFFLOAD_BUFFERS * gather_unit_params * ctx.precision_bytes.weight * mc.trainable_fraction
        staged_acts = 2 * OFFLOAD_BUFFERS * act_layer + np.where(with_logits, logits_act, 0.0)
        weights, grads, optim, acts = offloaded_gpu_states(weights, grads, optim, acts, codes, staged_grads, staged_acts)
    buffers = zero3_buffer_bytes(zero, gather_unit_params, ctx.precision_bytes.weight)
    buffers = np.maximum(buffers, zero3_pipeline_resident_bytes(zero, x.pp, (ne + ex) * mc.trainable_fraction,
                                                                ctx.precision_bytes))
    optimizer_local = (ne / np.where(zero >= 1, x.dp_group, 1.0) + ex / np.where(zero >= 1, x.edp_group, 1.0)
                       if wl.method == "full" else np.zeros_like(ne))
    # An optimizer offloaded to the host steps there: no temporaries on the GPU.
    step_excess = optimizer_step_excess(np.where(c.offload_optimizer > 0, 0.0, optimizer_local),
                                        acts + temporaries + buffers, ctx.optimizer_kernel)
    allocated = weights + grads + optim + acts + temporaries + buffers + step_excess
    return ({"weights": weights, "gradients": grads, "optimizer": optim, "activations": acts,
             "activation_temporaries": temporaries, "comm_buffers": buffers, "optimizer_step": step_excess,
             "fragmentation": allocator_fragmentation(allocated, ctx.costs.allocator_overhead),
             "runtime": np.full(np.shape(allocated), ctx.costs.runtime_reserved_bytes)}, tiers)


def _memory(ctx: TrainContext, c: Candidates, x: _Rows, per_layer: dict, params: StageParams, offloaded: bool,
            detail: bool) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], tuple]:
    """Memory per GPU on the stage that needs the most (as the device shows it, and what must
    fit), its parts (``detail``), and the (host, NVMe) bytes offloaded per GPU."""
    unit = zero3_gather_unit_params(ctx.model, ctx.zero3_gather_unit, x.tp, x.ep, x.edp_group,
                                    params.nonexpert_layer, params.expert_layer, x.etp)
    stages = [_stage_memory(ctx, c, x, per_layer, params, unit, i, offloaded) for i in range(3)]
    mems = [s[0] for s in stages]
    totals = [sum(mm.values()) for mm in mems]
    totals[1] = np.where(x.pp > 2, totals[1], 0.0)
    # What must fit: the tensors, the fragmentation a full GPU leaves (the allocator frees its
    # cached blocks and retries before it fails), and the runtime.
    pressure = min(ctx.costs.allocator_overhead, FRAGMENTATION_AT_CAPACITY)
    required = [sum(mm[k] for k in ALLOCATED_PARTS) * (1.0 + pressure) + mm["runtime"] for mm in mems]
    required[1] = np.where(x.pp > 2, required[1], 0.0)
    parts: dict[str, np.ndarray] = {}
    if detail:
        peak_stage = np.argmax(np.stack(np.broadcast_arrays(*totals)), axis=0)
        parts = {k: _pick(peak_stage, mems[0][k], mems[1][k], mems[2][k]) for k in MEMORY_PARTS}
    host, nvme = stages[0][1]
    zeros = np.zeros(len(c))
    return _max3(totals), _max3(required), parts, (zeros + host, zeros + nvme)


def evaluate(ctx: TrainContext, c: Candidates, *, detail: bool = True) -> StepEvaluation:
    """Step time, memory and FLOPs of every row of ``c``. ``detail=False`` skips the per-part
    time and memory breakdowns (empty dicts) for searches that only rank; the totals are the same
    expressions either way."""
    model, cluster, wl = ctx.model, ctx.cluster, ctx.workload
    x = _Rows.of(ctx, c)
    # Per layer: computed once per distinct (tp, cp, ep, micro_batch, sp, recompute).
    first, inverse = _unique_rows(c, LAYER_KEY)
    per_layer = {k: np.broadcast_to(v, first.shape)[inverse] for k, v in _per_layer(ctx, c.take(first)).items()}
    pipe = _pipeline(ctx, x, per_layer, per_layer["time"] + ctx.costs.layer_pass_overhead_s)
    params = stage_params(model, x.layers, x.tp, x.ep, x.single, x.etp)
    dp, opt = _tail(ctx, c, x, pipe, params)
    emb_sync = tied_embedding_sync(model, x.tp, x.single, not model.tie_embeddings, x.crosses, ctx.fabric,
                                   ctx.precision_bytes.grad)
    step = pipe.time_s + _max3(tuple(d + o for d, o in zip(dp, opt))) + emb_sync

    # Offloading: rows whose step runs on the event timeline of train/offload_timeline.py.
    offloaded = np.flatnonzero(c.offloads)
    off_times = None
    if offloaded.size:
        zero = c.zero
        local = (params.nonexpert[0] / np.where(zero >= 1, x.dp_group, 1.0)
                 + params.expert[0] / np.where(zero >= 1, x.edp_group, 1.0))
        off_times = offload_times(ctx, c, offloaded, per_layer, per_layer["emb"], per_layer["logits"],
                                  params.nonexpert[0] + params.expert[0], local, opt[0], x.m,
                                  record=detail and len(c) == 1)
        step = step.copy()
        step[offloaded] = (x.m[offloaded] * off_times.microbatch_s + off_times.optimizer_s
                           + dp[0][offloaded] + np.broadcast_to(emb_sync, step.shape)[offloaded])

    parts: dict[str, np.ndarray] = {}
    if detail:
        parts = _time_parts(ctx, x, per_layer, pipe, dp, opt, emb_sync)
        parts["offload_wait"] = np.zeros_like(step)
        if off_times is not None:
            parts = _offloaded_parts(parts, step, offloaded, off_times, x.m, dp[0], emb_sync)
    memory_bytes, required_bytes, memory_parts, (host, nvme) = _memory(ctx, c, x, per_layer, params,
                                                                       bool(offloaded.size), detail)
    tier_capacity = (ctx.tiers.host_capacity, ctx.tiers.nvme_capacity) if offloaded.size else (np.inf, np.inf)
    tokens = float(wl.global_batch) * wl.seq_len
    flops = step_flops(model, wl.seq_len, tokens, c.recompute, flash=ctx.attention_kernel == "flash",
                       selective=ctx.selective_recompute)
    return StepEvaluation(
        step_time_s=step, time_parts_s=parts, memory_parts_bytes=memory_parts, memory_bytes=memory_bytes,
        required_bytes=required_bytes,
        capacity_bytes=cluster.gpu.memory.capacity_bytes, num_microbatches=x.m,
        model_flops_per_step=flops.model, hardware_flops_per_step=flops.hardware,
        executed_flops_per_step=flops.executed, peak_flops=cluster.gpu.peak(ctx.precision),
        num_gpus=cluster.num_gpus, tokens_per_step=tokens, host_bytes=host, nvme_bytes=nvme,
        host_capacity_bytes=float(tier_capacity[0]), nvme_capacity_bytes=float(tier_capacity[1]), offload=off_times,
    )

