"""``predict train``: resolve a scenario, check it, evaluate one row, and explain the result."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sextant.catalog import build_cluster, get_model, get_profile
from sextant.catalog.frameworks import fill_unset, get_framework
from sextant.errors import SpecError
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile, ProfileFile
from sextant.spec.scenario import HardwareRef, TrainScenario
from sextant.train.candidates import Candidates
from sextant.train.result import MEMORY_PART_LABELS, TIME_PART_LABELS, TrainResult
from sextant.train.step import (
    ALLOCATOR_OVERHEAD,
    RUNTIME_RESERVED_BYTES,
    TrainContext,
    evaluate,
)
from sextant.train.validate_strategy import check_strategy
from sextant.units import GiB

FLOP_CONVENTION = (
    "model FLOPs per PaLM appendix B (6 x matmul params + 12 x layers x heads x head_dim x seq per "
    "token, non-causal); MFU over the dense peak of the training precision; HFU adds recomputation. "
    "Causal kernels run half the attention FLOPs, so at long sequences MFU/HFU can exceed what the "
    "GPU executes: hardware_utilization counts the executed FLOPs and never exceeds 1"
)


def load_profile_file(path: str) -> ProfileFile:
    """A profile written by ``sextant calibrate`` (or a bare HardwareProfile JSON)."""
    try:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and "format" not in data and "profile" not in data:
            data = {"profile": data}
        return ProfileFile.model_validate(data)
    except FileNotFoundError:
        raise SpecError(f"no such file {path}", field="profile") from None
    except (json.JSONDecodeError, ValueError) as err:
        first = str(err).splitlines()
        detail = " ".join(first[:3]) if first else str(err)
        raise SpecError(f"{path} is not a valid hardware profile: {detail}", field="profile") from None


def cluster_and_profile(hw: HardwareRef) -> tuple[ClusterSpec, HardwareProfile]:
    """The cluster and profile of a scenario: catalog entries, or a profile file that may bring
    its own device (a calibrated CPU, a GPU the catalog lacks)."""
    cluster, profile = _cluster_and_profile(hw)
    if hw.gpu_memory_gib is None:
        return cluster, profile
    memory = cluster.gpu.memory.model_copy(update={"capacity_bytes": hw.gpu_memory_gib * GiB})
    return cluster.model_copy(update={"gpu": cluster.gpu.model_copy(update={"memory": memory})}), profile


def _cluster_and_profile(hw: HardwareRef) -> tuple[ClusterSpec, HardwareProfile]:
    if not hw.profile:
        cluster = build_cluster(hw.gpu, hw.gpus, gpus_per_node=hw.gpus_per_node, node=hw.node,
                                network=hw.network, nics_per_node=hw.nics_per_node)
        return cluster, get_profile(cluster.gpu.name)
    loaded = load_profile_file(hw.profile)
    gpu_given = "gpu" in hw.model_fields_set
    if loaded.device is None:
        cluster = build_cluster(hw.gpu if gpu_given else loaded.profile.gpu, hw.gpus, gpus_per_node=hw.gpus_per_node,
                                node=hw.node, network=hw.network, nics_per_node=hw.nics_per_node)
    else:
        if gpu_given and hw.gpu.strip().lower() != loaded.device.name:
            raise SpecError(f"{hw.profile} describes {loaded.device.name}, not {hw.gpu}; leave --gpu out",
                            field="gpu")
        if hw.gpus > loaded.node.gpus_per_node:
            raise SpecError(f"{hw.profile} describes one {loaded.node.name} with {loaded.node.gpus_per_node} "
                            f"device(s); {hw.gpus} asked", field="gpus")
        cluster = ClusterSpec(node=loaded.node, gpu=loaded.device, num_gpus=hw.gpus)
    if loaded.profile.gpu != cluster.gpu.name:
        raise SpecError(f"{hw.profile} was measured on {loaded.profile.gpu}, not {cluster.gpu.name}", field="profile")
    return cluster, loaded.profile


@dataclass(frozen=True)
class FrameworkCosts:
    """What a framework preset adds to the cost model beyond strategy and workload defaults
    (frameworks.yaml documents each fitted value and the runs it was fitted on)."""

    #: Factor on the hardware profile's kernel efficiencies.
    kernel_efficiency: float = 1.0
    #: Seconds added to each layer's forward, recomputation and backward of one micro-batch.
    layer_pass_overhead_s: float = 0.0
    #: Device memory outside the tensors the model accounts for, and the caching allocator's
    #: reserve as a fraction of those tensors (what nvidia-smi shows beyond them).
    runtime_reserved_bytes: float = RUNTIME_RESERVED_BYTES
    allocator_overhead: float = ALLOCATOR_OVERHEAD


def apply_framework(scenario: TrainScenario) -> tuple[TrainScenario, FrameworkCosts]:
    """Fill the strategy and workload fields the scenario left unset from its framework preset;
    return the scenario and the preset's costs (the defaults without a preset)."""
    if scenario.framework is None:
        return scenario, FrameworkCosts()
    preset = get_framework(scenario.framework)
    return fill_unset(scenario, preset, ("strategy", "workload")), framework_costs(preset)


def framework_costs(preset: dict) -> FrameworkCosts:
    """A framework preset's costs (frameworks.yaml), the defaults where it states none."""
    return FrameworkCosts(
        kernel_efficiency=float(preset.get("kernel_efficiency", 1.0)),
        layer_pass_overhead_s=float(preset.get("layer_pass_overhead_s", 0.0)),
        runtime_reserved_bytes=float(preset.get("runtime_reserved_gib", RUNTIME_RESERVED_BYTES / GiB)) * GiB,
        allocator_overhead=float(preset.get("allocator_overhead", ALLOCATOR_OVERHEAD)),
    )


def resolve_context(scenario: TrainScenario) -> TrainContext:
    """The scenario's model, cluster, profile and fixed options, with its framework preset
    applied; the parallel strategy is not checked (the planner varies it)."""
    scenario, costs = apply_framework(scenario)
    model = scenario.model if isinstance(scenario.model, ModelSpec) else get_model(scenario.model)
    cluster, profile = cluster_and_profile(scenario.hardware)
    profile = profile.scaled(costs.kernel_efficiency, f"{scenario.framework} kernels")
    strategy, workload = scenario.strategy, scenario.workload
    cluster.gpu.peak(strategy.precision)  # raises a clear error for e.g. fp8 on an A100
    return TrainContext(
        model=model, cluster=cluster, profile=profile, workload=workload,
        layer_pass_overhead_s=costs.layer_pass_overhead_s, runtime_reserved_bytes=costs.runtime_reserved_bytes,
        allocator_overhead=costs.allocator_overhead,
        precision=strategy.precision, attention_kernel=strategy.attention_kernel,
        dropout=workload.dropout, overlap=strategy.overlap, dp_collective=strategy.dp_collective,
        zero3_gather_unit=strategy.zero3_gather_unit, fp32_grad_copy=strategy.fp32_grad_copy,
        bf16_grad_copy=strategy.bf16_grad_copy,
        partition_activations=strategy.partition_activations,
    )


def build_context(scenario: TrainScenario) -> tuple[TrainContext, Candidates]:
    """The context and the scenario's strategy as a one-row table, after checking it can run."""
    ctx = resolve_context(scenario)
    strategy = apply_framework(scenario)[0].strategy
    dp = check_strategy(ctx.model, ctx.cluster, strategy, ctx.workload)
    return ctx, Candidates.from_strategy(strategy, dp)


def bottleneck_sentence(parts: dict[str, float], step: float) -> str:
    ranked = sorted(parts.items(), key=lambda kv: kv[1], reverse=True)
    name, value = ranked[0]
    text = f"{TIME_PART_LABELS[name]}: {value / step:.0%} of the step"
    if len(ranked) > 1 and ranked[1][1] > 0.1 * step:
        text += f"; then {TIME_PART_LABELS[ranked[1][0]]} ({ranked[1][1] / step:.0%})"
    return text


#: The resource a time part occupies, for naming what binds a step that offloads nothing.
PART_RESOURCE = {"tp_comm": "intra-node link", "cp_comm": "network", "ep_comm": "network", "pp_p2p": "network",
                 "dp_comm": "network", "pipeline_bubble": "GPU (idle in the pipeline bubble)"}


def binding_resource(parts: dict[str, float], busy: dict[str, float] | None) -> str:
    """What limits the step: on an offload timeline, the busiest resource; otherwise the resource
    of the largest part of the breakdown (GPU compute unless communication dominates)."""
    if busy:
        from sextant.cost.tiers import RESOURCE_LABELS

        return RESOURCE_LABELS[max(busy, key=busy.get)]
    return PART_RESOURCE.get(max(parts, key=parts.get), "GPU compute")


def predict_train(scenario: TrainScenario, *, trace_out: str | None = None) -> TrainResult:
    ctx, cand = build_context(scenario)
    scenario, _ = apply_framework(scenario)
    ev = evaluate(ctx, cand)
    s = scenario.strategy
    step = float(ev.step_time_s[0])
    parts = {k: float(v[0]) for k, v in ev.time_parts_s.items()}
    memory = {k: float(v[0]) / GiB for k, v in ev.memory_parts_bytes.items()}
    memory["total"] = float(ev.memory_bytes[0]) / GiB
    capacity = ev.capacity_bytes / GiB
    assumptions = [
        f"framework overhead: {ctx.allocator_overhead:.0%} allocator fragmentation + "
        f"{ctx.runtime_reserved_bytes / GiB:.1f} GiB runtime (CUDA context, workspaces, NCCL)",
        f"attention kernel: {ctx.attention_kernel}; dropout: {'on' if ctx.dropout else 'off'}",
        "overlap: " + (", ".join(k for k, v in ctx.overlap.model_dump().items() if v is True) or "none")
        + (f" (hiding {ctx.overlap.efficiency:.0%} of the overlappable time)" if ctx.overlap.efficiency < 1 else ""),
        f"data-parallel collectives: {ctx.dp_collective}",
    ]
    if ctx.model.is_moe:
        assumptions.append(f"expert load imbalance {ctx.workload.expert_imbalance} (busiest rank / mean)")
    busy = None
    if s.offloads:
        busy = {k: float(v[0]) for k, v in ev.offload.busy_step(ev.num_microbatches[0]).items()}
        assumptions.append("offload tiers " + ctx.tiers.describe())
        when = ("each layer's update overlapping the last backward (Fuyou)" if ctx.overlap.optimizer_with_backward
                else "the update of each step beside the next (ZeRO-Offload's delayed parameter update, steady state)"
                if ctx.overlap.delayed_parameter_update else "optimizer after the last backward")
        assumptions.append("offload timeline: two layer buffers per stream, micro-batches separated by a "
                           f"synchronization, {when} (train/offload.py)")
        if trace_out:
            from sextant.train.offload import write_trace

            write_trace(ev.offload, float(ev.num_microbatches[0]), trace_out)
    elif trace_out:
        raise SpecError("--trace-out draws the offload timeline; this configuration offloads nothing", field="trace_out")
    if ctx.workload.method != "full":
        assumptions.append(f"training method {ctx.workload.method} (rank {ctx.workload.adapter_rank}): "
                           "model FLOPs still count 6N per token (the convention of full training)")
    tiers = {"gpu": memory["total"], "host": float(np.asarray(ev.host_bytes).ravel()[0]) / GiB,
             "nvme": float(np.asarray(ev.nvme_bytes).ravel()[0]) / GiB}
    tier_capacity = {"gpu": capacity}
    if s.offloads:
        tier_capacity.update(host=ctx.tiers.host_capacity / GiB, nvme=ctx.tiers.nvme_capacity / GiB)
    return TrainResult(
        model=ctx.model.name, framework=scenario.framework, gpu=ctx.cluster.gpu.name, gpus=ctx.cluster.num_gpus,
        dp=int(cand.dp[0]), tp=s.tp, pp=s.pp, cp=s.cp, ep=s.ep, vpp=s.vpp, zero=s.zero,
        micro_batch=s.micro_batch, global_batch=scenario.workload.global_batch,
        seq_len=scenario.workload.seq_len, recompute=s.recompute, sequence_parallel=s.sequence_parallel,
        schedule=s.resolved_schedule, precision=s.precision,
        num_microbatches=float(ev.num_microbatches[0]),
        step_time_s=step,
        tokens_per_s=float(ev.tokens_per_s[0]),
        tokens_per_s_per_gpu=float(ev.tokens_per_s[0]) / ctx.cluster.num_gpus,
        model_tflops_per_gpu=float(ev.model_tflops_per_gpu[0]),
        mfu=float(ev.mfu[0]),
        hfu=float(ev.hfu[0]),
        executed_tflops_per_gpu=float(ev.executed_flops_per_step[0]) / step / ctx.cluster.num_gpus / 1e12,
        hardware_utilization=float(ev.hardware_utilization[0]),
        flop_convention=FLOP_CONVENTION,
        memory_gb_per_gpu=memory,
        memory_capacity_gb=capacity,
        fits=bool(ev.fits[0]),
        memory_headroom_gb=capacity - memory["total"],
        time_breakdown_s=parts,
        bottleneck=bottleneck_sentence(parts, step),
        profile=ctx.profile.name,
        assumptions=assumptions,
        method=ctx.workload.method,
        offload_optimizer=s.offload_optimizer, offload_params=s.offload_params,
        offload_activations=s.offload_activations,
        memory_gb_per_tier=tiers, tier_capacity_gb=tier_capacity,
        binding_resource=binding_resource(parts, busy), resource_busy_s=busy or {},
    )


__all__ = ["MEMORY_PART_LABELS", "TIME_PART_LABELS", "build_context", "predict_train"]
