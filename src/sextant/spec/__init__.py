"""Plain-data specifications (pydantic) at Sextant's boundaries: model, hardware, strategy,
workload, hardware profile and scenario. Nothing in this package computes a cost.

The names below load on first use, so that importing one light module of the package
(``sextant.spec.limits``) does not build every pydantic model (the CLI's start-up)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "ClusterSpec": "hardware", "GPUSpec": "hardware", "LinkSpec": "hardware", "MemoryTier": "hardware",
    "NodeSpec": "hardware", "MLASpec": "model", "ModelSpec": "model", "MoESpec": "model",
    "HardwareProfile": "profile", "Strategy": "strategy", "TrainWorkload": "workload",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"sextant.spec.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'sextant.spec' has no attribute {name!r}")


__all__ = sorted(_HOMES)
