"""Time of the optimizer step on the GPU.

The step is memory-bound: fused multi-tensor Adam (Apex, PyTorch's ``foreach``/``fused``
implementations) reads and writes every state byte once (:func:`optimizer_step_bytes`), in a few
kernels per parameter group. Where the profile measured the step's rate (``sextant calibrate``
runs PyTorch's AdamW), the measured rate replaces the estimate: unfused optimizers make several
passes over their state.
"""

from __future__ import annotations

import numpy as np

from sextant.cost.compute import memory_bound_time
from sextant.cost.memory import optimizer_step_bytes
from sextant.spec.profile import HardwareProfile

#: Kernels one optimizer step launches (multi-tensor apply: a handful per parameter group).
OPTIMIZER_KERNELS = 8


def optimizer_step_time(local_params, optimizer: str, precision: str, profile: HardwareProfile,
                        mem_bw: float) -> np.ndarray:
    """Seconds to update ``local_params`` parameters on one GPU."""
    if profile.optimizer_params_per_s is not None and optimizer in ("adam", "adamw"):
        return local_params / profile.optimizer_params_per_s
    return memory_bound_time(local_params * optimizer_step_bytes(optimizer, precision), mem_bw=mem_bw,
                             profile=profile, kernels=OPTIMIZER_KERNELS)
