"""Plain-data specifications (pydantic) at Sextant's boundaries: model, hardware, strategy,
workload, hardware profile and scenario. Nothing in this package computes a cost."""

from sextant.spec.hardware import ClusterSpec, GPUSpec, LinkSpec, MemoryTier, NodeSpec
from sextant.spec.model import MLASpec, ModelSpec, MoESpec
from sextant.spec.profile import HardwareProfile
from sextant.spec.strategy import Strategy
from sextant.spec.workload import TrainWorkload

__all__ = [
    "ClusterSpec",
    "GPUSpec",
    "HardwareProfile",
    "LinkSpec",
    "MLASpec",
    "MemoryTier",
    "ModelSpec",
    "MoESpec",
    "NodeSpec",
    "Strategy",
    "TrainWorkload",
]
