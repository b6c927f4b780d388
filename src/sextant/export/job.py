"""A training scenario resolved for export: its preset applied, its layout checked, its nodes."""

from __future__ import annotations

from dataclasses import dataclass

from sextant.resolve.framework import apply_framework, framework_family
from sextant.resolve.hardware import cluster_and_profile, model_of
from sextant.resolve.layout import check_training
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.scenario import TrainScenario
from sextant.spec.strategy import Strategy
from sextant.spec.workload import TrainWorkload


@dataclass(frozen=True)
class TrainJob:
    scenario: TrainScenario
    model: ModelSpec
    cluster: ClusterSpec
    dp: int

    @property
    def strategy(self) -> Strategy:
        return self.scenario.strategy

    @property
    def workload(self) -> TrainWorkload:
        return self.scenario.workload

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.gpus_per_node

    @property
    def nodes(self) -> int:
        return -(-self.cluster.num_gpus // self.gpus_per_node)

    @property
    def grad_accumulation(self) -> int:
        return self.workload.global_batch // (self.strategy.micro_batch * self.dp)

    def preset_note(self, framework: str, fmt: str) -> list[str]:
        """A note when the prediction's framework preset is not of the family of the exported
        format's preset (:data:`sextant.export.PRESETS`), naming that preset."""
        from sextant.export import PRESETS

        preset = PRESETS[fmt]
        if framework_family(self.scenario.framework) == framework_family(preset):
            return []
        used = f"the {self.scenario.framework} preset" if self.scenario.framework else "no framework preset"
        return [f"predicted with {used}: `--framework {preset}` predicts {framework}'s kernels, overlap and memory"]


def train_job(scenario: TrainScenario) -> TrainJob:
    """Resolve ``scenario`` as ``predict train`` does (a layout it refuses is refused here too)."""
    scenario, _ = apply_framework(scenario)
    model = model_of(scenario.model)
    cluster, _ = cluster_and_profile(scenario.hardware)
    dp = check_training(model, cluster, scenario.strategy, scenario.workload)
    return TrainJob(scenario, model, cluster, dp)
