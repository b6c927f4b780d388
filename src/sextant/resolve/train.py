"""A training scenario resolved once: its framework preset applied, its model, cluster and profile
found, and every object the cost model derives from them (device, fabric, tier rates, method
costs, precision bytes) computed, in one frozen :class:`TrainContext` that every evaluation of
the scenario's candidates shares."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sextant.cost.comm import Fabric
from sextant.cost.finetune import MethodCosts, method_costs
from sextant.cost.layer import Device, device_for
from sextant.cost.memory import optimizer_state_bytes
from sextant.cost.precision import PrecisionBytes, attention_dtype, precision_bytes
from sextant.cost.tiers import TierRates, tier_rates
from sextant.resolve.framework import FrameworkCosts, apply_framework
from sextant.resolve.hardware import cluster_and_profile, model_of
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile
from sextant.spec.scenario import TrainScenario
from sextant.spec.strategy import Overlap
from sextant.spec.workload import TrainWorkload


@dataclass(frozen=True)
class TrainContext:
    """Everything fixed across the candidates of one evaluation: the scenario's model, hardware,
    workload and execution options, and the objects derived from them (fields computed once, at
    construction; ``dataclasses.replace`` derives them again)."""

    model: ModelSpec
    cluster: ClusterSpec
    profile: HardwareProfile
    workload: TrainWorkload
    framework: str | None = None
    precision: str = "bf16"
    attention_kernel: str = "flash"
    dropout: bool = False
    overlap: Overlap = Overlap()
    dp_collective: str = "hierarchical"
    zero3_gather_unit: str = "layer"
    fp32_grad_copy: bool = True
    bf16_grad_copy: bool = False
    partition_activations: bool = False
    selective_recompute: str = "attention_core"
    fused_projections: bool = True
    moe_dispatcher: str = "alltoall"
    grad_buffer: str = "fp32"
    loss_kernel: str = "vocab_parallel"
    optimizer_kernel: str = "fused"
    fp8_saved_inputs: str = "fp8"
    #: What the framework preset adds: per-layer overhead, memory beyond the tensors (its kernel
    #: efficiency is already in ``profile``).
    costs: FrameworkCosts = FrameworkCosts()

    precision_bytes: PrecisionBytes = field(init=False)
    device: Device = field(init=False)
    fabric: Fabric = field(init=False)
    tiers: TierRates = field(init=False)
    method: MethodCosts = field(init=False)

    def __post_init__(self) -> None:
        pb = precision_bytes(self.precision)
        if self.grad_buffer == "bf16" and pb.master_copy and pb.weight == 2.0:
            pb = replace(pb, grad=2.0)
        gpu = self.cluster.gpu
        derived = {
            "precision_bytes": pb,
            "device": device_for(gpu, self.profile, self.precision, attention_dtype(self.precision),
                                 gemm_bytes=pb.gemm_operand, act_bytes=pb.activation, training=True),
            "fabric": Fabric.of(self.cluster, self.profile),
            "tiers": tier_rates(self.cluster, self.profile),
            "method": method_costs(self.model, self.workload.method, self.workload.adapter_rank, pb.weight, pb.grad,
                                   optimizer_state_bytes(self.workload.optimizer, self.precision)),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


def resolve_train(scenario: TrainScenario) -> tuple[TrainScenario, TrainContext]:
    """The scenario with its framework preset applied, and its context. The parallel strategy is
    not checked here (the planner varies it); ``sextant.train.predict.build_context`` checks it."""
    scenario, costs = apply_framework(scenario)
    model = model_of(scenario.model)
    cluster, profile = cluster_and_profile(scenario.hardware)
    profile = profile.scaled(costs.kernel_efficiency, f"{scenario.framework} kernels")
    s = scenario.strategy
    ctx = TrainContext(
        model=model, cluster=cluster, profile=profile, workload=scenario.workload,
        framework=scenario.framework, precision=s.precision, attention_kernel=s.attention_kernel,
        dropout=scenario.workload.dropout, overlap=s.overlap, dp_collective=s.dp_collective,
        zero3_gather_unit=s.zero3_gather_unit, fp32_grad_copy=s.fp32_grad_copy, bf16_grad_copy=s.bf16_grad_copy,
        partition_activations=s.partition_activations, selective_recompute=s.selective_recompute,
        fused_projections=s.fused_projections, moe_dispatcher=s.moe_dispatcher, grad_buffer=s.grad_buffer,
        loss_kernel=s.loss_kernel, optimizer_kernel=s.optimizer_kernel, fp8_saved_inputs=s.fp8_saved_inputs,
        costs=costs,
    )
    return scenario, ctx
