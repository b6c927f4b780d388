"""Framework presets (catalog/data/frameworks.yaml, serving_frameworks.yaml) applied to a
scenario: the fields it left unset filled from the preset, and what the preset adds to the cost
model (kernel efficiency, per-layer overhead, memory beyond the tensors, search limits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sextant.catalog.frameworks import fill_unset, get_framework, get_serving_framework
from sextant.cost.memory import ALLOCATOR_OVERHEAD, RUNTIME_RESERVED_BYTES
from sextant.spec.scenario import TrainScenario
from sextant.spec.serving import ServeScenario
from sextant.units import GiB


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


def framework_costs(preset: dict[str, Any]) -> FrameworkCosts:
    """A framework preset's costs (frameworks.yaml), the defaults where it states none."""
    return FrameworkCosts(
        kernel_efficiency=float(preset.get("kernel_efficiency", 1.0)),
        layer_pass_overhead_s=float(preset.get("layer_pass_overhead_s", 0.0)),
        runtime_reserved_bytes=float(preset.get("runtime_reserved_gib", RUNTIME_RESERVED_BYTES / GiB)) * GiB,
        allocator_overhead=float(preset.get("allocator_overhead", ALLOCATOR_OVERHEAD)),
    )


def apply_framework(scenario: TrainScenario) -> tuple[TrainScenario, FrameworkCosts]:
    """Fill the strategy and workload fields the scenario left unset from its framework preset;
    return the scenario and the preset's costs (the defaults without a preset). Filling twice
    changes nothing: a filled field counts as set."""
    if scenario.framework is None:
        return scenario, FrameworkCosts()
    preset = get_framework(scenario.framework)
    return fill_unset(scenario, preset, ("strategy", "workload")), framework_costs(preset)


def search_limits(framework: str | None) -> dict[str, Any]:
    """What a training framework can run, for the planner (a preset's ``search``): allowed ZeRO
    stages, recomputation and sequence-parallel choices, context parallelism, virtual stages."""
    return {} if framework is None else dict(get_framework(framework).get("search", {}))


def framework_family(framework: str | None) -> str:
    """The family of a training preset (frameworks.yaml ``family``: megatron, deepspeed,
    pytorch-native, ...), for validation by regime; ``none`` without a preset."""
    return "none" if framework is None else str(get_framework(framework).get("family", framework))


def apply_serving_framework(scenario: ServeScenario) -> ServeScenario:
    """Fill the scheduler, deployment and offload fields the scenario left unset from its
    serving framework preset."""
    if scenario.framework is None:
        return scenario
    return fill_unset(scenario, get_serving_framework(scenario.framework), ("scheduler", "deployment", "offload"))
