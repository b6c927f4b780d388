"""Wall-clock timing of one operation on a device, robust to a noisy shared machine.

Each measurement runs the operation until a time budget is spent (at least ``min_repeats``
times, after ``warmup`` untimed runs) and reports the median: the median ignores the
occasional preempted run that a mean would absorb. On CUDA the device is synchronized before
the clock is read, so queued kernels are counted (the same method as ``torch.utils.benchmark``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def median_seconds(fn: Callable[[], object], device: str, *, budget_s: float = 0.25, min_repeats: int = 3,
                   max_repeats: int = 200, warmup: int = 1) -> float:
    """Median seconds of one call of ``fn`` (synchronized)."""
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_repeats or (spent < budget_s and len(samples) < max_repeats):
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        spent += elapsed
    return statistics.median(samples)
