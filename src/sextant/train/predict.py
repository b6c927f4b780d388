"""``predict train``: resolve a scenario, check it, evaluate one row, and explain the result."""

from __future__ import annotations

import numpy as np

from sextant.cost.tiers import RESOURCE_LABELS
from sextant.resolve.intervals import interval_band, memory_bound
from sextant.resolve.layout import check_training
from sextant.resolve.train import TrainContext, resolve_train
from sextant.spec.scenario import TrainScenario
from sextant.spec.strategy import OFFLOAD_NAMES, RECOMPUTE_NAMES, SCHEDULE_NAMES
from sextant.train.candidates import Candidates
from sextant.train.offload_timeline import write_trace
from sextant.train.pipeline_schedule import write_schedule_trace
from sextant.train.result import MEMORY_PART_LABELS, TIME_PART_LABELS, TrainResult
from sextant.train.step import StepEvaluation, evaluate
from sextant.units import GiB

FLOP_CONVENTION = (
    "model FLOPs per PaLM appendix B (6 x matmul params + 12 x layers x heads x head_dim x seq per "
    "token, non-causal); MFU over the dense peak of the training precision; HFU adds recomputation. "
    "Causal kernels run half the attention FLOPs, so at long sequences MFU/HFU can exceed what the "
    "GPU executes: hardware_utilization counts the executed FLOPs and never exceeds 1"
)

#: The resource a time part occupies, for naming what binds a step that offloads nothing.
PART_RESOURCE = {"tp_comm": "intra-node link", "cp_comm": "network", "ep_comm": "network", "pp_p2p": "network",
                 "dp_comm": "network", "pipeline_bubble": "GPU (idle in the pipeline bubble)"}


def build_context(scenario: TrainScenario) -> tuple[TrainContext, Candidates]:
    """The resolved context and the scenario's strategy as a one-row table, after checking that
    the strategy can run."""
    scenario, ctx = resolve_train(scenario)
    dp = check_training(ctx.model, ctx.cluster, scenario.strategy, ctx.workload)
    return ctx, Candidates.from_strategy(scenario.strategy, dp)


def bottleneck_sentence(parts: dict[str, float], step: float) -> str:
    ranked = sorted(parts.items(), key=lambda kv: kv[1], reverse=True)
    name, value = ranked[0]
    text = f"{TIME_PART_LABELS[name]}: {value / step:.0%} of the step"
    if len(ranked) > 1 and ranked[1][1] > 0.1 * step:
        text += f"; then {TIME_PART_LABELS[ranked[1][0]]} ({ranked[1][1] / step:.0%})"
    return text


def binding_resource(parts: dict[str, float], busy: dict[str, float] | None) -> str:
    """What limits the step: on an offload timeline, the busiest resource; otherwise the resource
    of the largest part of the breakdown (GPU compute unless communication dominates)."""
    if busy:
        return RESOURCE_LABELS[max(busy, key=busy.get)]
    return PART_RESOURCE.get(max(parts, key=parts.get), "GPU compute")


def predict_train(scenario: TrainScenario, *, trace_out: str | None = None) -> TrainResult:
    """Predict one configuration: resolve and check it, evaluate it, explain it."""
    ctx, cand = build_context(scenario)
    return explain(ctx, cand, trace_out=trace_out)


def _assumptions(ctx: TrainContext, offloads: bool) -> list[str]:
    costs = ctx.costs
    assumptions = [
        f"framework overhead: {costs.allocator_overhead:.0%} allocator fragmentation + "
        f"{costs.runtime_reserved_bytes / GiB:.1f} GiB runtime (CUDA context, workspaces, NCCL)",
        f"attention kernel: {ctx.attention_kernel}; dropout: {'on' if ctx.dropout else 'off'}",
        "overlap: " + (", ".join(k for k, v in ctx.overlap.model_dump().items() if v is True) or "none")
        + (f" (hiding {ctx.overlap.efficiency:.0%} of the overlappable time)" if ctx.overlap.efficiency < 1 else ""),
        f"data-parallel collectives: {ctx.dp_collective}",
    ]
    context = ctx.model.context_note(ctx.workload.seq_len, "a sequence")
    if context:
        assumptions.append(context)
    if not ctx.profile.fitted:
        assumptions.append(f"profile {ctx.profile.name} is not fully fitted to measured runs of the {ctx.cluster.gpu.name}: "
                           f"{ctx.profile.provenance.split('. ')[0]}; expect a larger error than docs/validation.md "
                           "reports for fitted GPUs")
    if ctx.selective_recompute != "attention_core":
        assumptions.append("selective recomputation: every second matmul and all element-wise ops of a block "
                           "(TorchTitan's per-op policy), not Megatron-LM's attention core")
    if ctx.model.is_moe:
        assumptions.append(f"expert load imbalance {ctx.workload.expert_imbalance} (busiest rank / mean); "
                           f"tokens dispatched by {ctx.moe_dispatcher}"
                           + (" (one copy per remote node)" if ctx.moe_dispatcher == "deepep" else " (one copy per expert)"))
    if offloads:
        assumptions.append("offload tiers " + ctx.tiers.describe())
        when = ("each layer's update overlapping the last backward (Fuyou)" if ctx.overlap.optimizer_with_backward
                else "the update of each step beside the next (ZeRO-Offload's delayed parameter update, steady state)"
                if ctx.overlap.delayed_parameter_update else "optimizer after the last backward")
        assumptions.append("offload timeline: two layer buffers per stream, micro-batches separated by a "
                           f"synchronization, {when} (train/offload_timeline.py)")
    if ctx.workload.method != "full":
        assumptions.append(f"training method {ctx.workload.method} (rank {ctx.workload.adapter_rank}): "
                           "model FLOPs still count 6N per token (the convention of full training)")
    return assumptions


def _memory(ctx: TrainContext, ev: StepEvaluation, offloads: bool) -> tuple[dict, dict, dict]:
    """GiB per GPU by part (and total), per tier, and each tier's capacity."""
    memory = {k: float(v[0]) / GiB for k, v in ev.memory_parts_bytes.items()}
    memory["total"] = float(ev.memory_bytes[0]) / GiB
    tiers = {"gpu": memory["total"], "host": float(np.asarray(ev.host_bytes).ravel()[0]) / GiB,
             "nvme": float(np.asarray(ev.nvme_bytes).ravel()[0]) / GiB}
    tier_capacity = {"gpu": ev.capacity_bytes / GiB}
    if offloads:
        tier_capacity.update(host=ctx.tiers.host_capacity / GiB, nvme=ctx.tiers.nvme_capacity / GiB)
    return memory, tiers, tier_capacity


def _interval(ctx: TrainContext, step: float, tokens_per_gpu: float, tflops: float) -> tuple[dict, str]:
    """The step time, throughput and TFLOP/s bounds of the prediction's regime (see
    :mod:`sextant.resolve.intervals`), and where they come from."""
    band = interval_band(ctx)
    if band is None:
        return {}, "no validated regime: no interval"
    level = band.level
    interval = {"step_time_s": {"low": step * band.low, "high": step * band.high, "level": level},
                "tokens_per_s_per_gpu": {"low": tokens_per_gpu / band.high, "high": tokens_per_gpu / band.low,
                                         "level": level},
                "model_tflops_per_gpu": {"low": tflops / band.high, "high": tflops / band.low, "level": level}}
    basis = (f"{level:.0%} split-conformal interval from {band.rows} published runs held out by source "
             f"(regime {band.pool}; docs/validation.md)")
    return interval, basis


def fits_statement(total_gib: float, upper_gib: float, capacity_gib: float, level: float) -> str:
    """The verdict on memory with its margin: fits (and by how much), fits only by the point
    estimate, or does not fit."""
    bound = f"{level:.0%} bound {upper_gib:.1f} GiB of {capacity_gib:.1f}"
    if upper_gib <= capacity_gib:
        return f"fits with {capacity_gib - total_gib:.1f} GiB to spare ({bound})"
    if total_gib <= capacity_gib:
        return f"fits by the estimate with {capacity_gib - total_gib:.1f} GiB to spare, but not surely ({bound})"
    return f"does not fit: {total_gib - capacity_gib:.1f} GiB short ({bound})"


def explain(ctx: TrainContext, cand: Candidates, *, trace_out: str | None = None) -> TrainResult:
    """The full report of the one configuration in ``cand`` (a checked one-row table), with its
    timeline written to ``trace_out`` where asked: the offload timeline when it offloads, else
    the step's 1F1B pipeline schedule."""
    ev = evaluate(ctx, cand)
    row = cand.row(0)
    offloads = bool(cand.offloads[0])
    step = float(ev.step_time_s[0])
    parts = {k: float(v[0]) for k, v in ev.time_parts_s.items()}
    busy = None
    if offloads:
        busy = {k: float(v[0]) for k, v in ev.offload.busy_step(ev.num_microbatches[0]).items()}
        if trace_out:
            write_trace(ev.offload, float(ev.num_microbatches[0]), trace_out)
    memory, tiers, tier_capacity = _memory(ctx, ev, offloads)
    capacity = ev.capacity_bytes / GiB
    gpus = ctx.cluster.num_gpus
    interval, basis = _interval(ctx, step, float(ev.tokens_per_s[0]) / gpus, float(ev.model_tflops_per_gpu[0]))
    bound = memory_bound(ctx.framework)
    required = float(ev.required_bytes[0]) / GiB
    upper = required * bound.upper_ratio
    pool = "every run" if bound.pool == "all" else f"{bound.pool} runs"
    assumptions = [*_assumptions(ctx, offloads), f"interval: {basis}",
                   f"memory bound: {bound.upper_ratio:.2f}x the estimate, the {bound.level:.0%} split-conformal bound of "
                   f"{bound.rows} measured peaks of {pool} (sextant validate memory)"]
    result = TrainResult(
        model=ctx.model.name, framework=ctx.framework, gpu=ctx.cluster.gpu.name, gpus=gpus,
        dp=row["dp"], tp=row["tp"], pp=row["pp"], cp=row["cp"], ep=row["ep"], etp=row["etp"], vpp=row["vpp"], zero=row["zero"],
        micro_batch=row["micro_batch"], global_batch=ctx.workload.global_batch, seq_len=ctx.workload.seq_len,
        recompute=RECOMPUTE_NAMES[row["recompute"]], sequence_parallel=bool(row["sequence_parallel"]),
        schedule=SCHEDULE_NAMES[row["schedule"]], precision=ctx.precision,
        num_microbatches=float(ev.num_microbatches[0]), step_time_s=step,
        tokens_per_s=float(ev.tokens_per_s[0]), tokens_per_s_per_gpu=float(ev.tokens_per_s[0]) / gpus,
        model_tflops_per_gpu=float(ev.model_tflops_per_gpu[0]), mfu=float(ev.mfu[0]), hfu=float(ev.hfu[0]),
        executed_tflops_per_gpu=float(ev.executed_flops_per_step[0]) / step / gpus / 1e12,
        hardware_utilization=float(ev.hardware_utilization[0]), flop_convention=FLOP_CONVENTION,
        memory_gb_per_gpu=memory, memory_capacity_gb=capacity, fits=bool(ev.fits[0]),
        memory_headroom_gb=capacity - required, memory_required_gb=required, memory_upper_gb=upper, memory_bound_level=bound.level,
        fits_statement=fits_statement(required, upper, capacity, bound.level), time_breakdown_s=parts,
        bottleneck=bottleneck_sentence(parts, step), profile=ctx.profile.name, profile_fitted=ctx.profile.fitted,
        interval=interval, interval_basis=basis,
        assumptions=assumptions, method=ctx.workload.method,
        offload_optimizer=OFFLOAD_NAMES[row["offload_optimizer"]], offload_params=OFFLOAD_NAMES[row["offload_params"]],
        offload_activations=OFFLOAD_NAMES[row["offload_activations"]],
        memory_gb_per_tier=tiers, tier_capacity_gb=tier_capacity,
        binding_resource=binding_resource(parts, busy), resource_busy_s=busy or {},
    )
    if trace_out and not offloads:  # the offload timeline above, else the pipeline schedule
        write_schedule_trace(result, trace_out)
    return result


__all__ = ["MEMORY_PART_LABELS", "TIME_PART_LABELS", "build_context", "explain", "predict_train"]
