"""Time of one kernel: roofline (compute peak vs memory bandwidth) times an achieved efficiency.

Roofline: Williams, Waterman and Patterson, "Roofline: an insightful visual performance model",
CACM 2009: t = max(FLOPs / (peak * eff_compute), bytes / (bandwidth * eff_memory)). The
efficiencies come from a :class:`HardwareProfile`; the shape dependence of GEMM efficiency is a
saturating curve per dimension (tile and wave quantization make small dimensions under-fill the
tensor cores; NVIDIA Deep Learning Performance guide, "Matrix multiplication background").

All functions accept NumPy arrays or floats and broadcast.
"""

from __future__ import annotations

import numpy as np

from sextant.spec.profile import EfficiencyTable, HardwareProfile

ArrayLike = np.ndarray | float


def shape_factor(dim: ArrayLike, half_dim: float) -> np.ndarray:
    """Fraction of the large-shape efficiency reached by a GEMM dimension of size ``dim``."""
    dim = np.asarray(dim, dtype=float)
    return dim / (dim + half_dim)


def gemm_efficiency(m: ArrayLike, n: ArrayLike, k: ArrayLike, profile: HardwareProfile,
                    table: EfficiencyTable | None = None) -> np.ndarray:
    """Achieved fraction of dense peak for an (m x k) @ (k x n) matrix multiply: the measured
    table of the GEMM's dtype where calibration produced one, else the profile's curve."""
    if table is not None:
        return table.interpolate(m, n, k)
    h = profile.gemm_half_dim
    h_rows = h if profile.gemm_half_rows is None else profile.gemm_half_rows
    return profile.gemm_max_efficiency * shape_factor(m, h_rows) * shape_factor(n, h) * shape_factor(k, h)


def gemm_time(
    m: ArrayLike,
    n: ArrayLike,
    k: ArrayLike,
    *,
    peak_flops: float,
    mem_bw: float,
    bytes_per_element: float,
    profile: HardwareProfile,
    count: ArrayLike = 1.0,
    table: EfficiencyTable | None = None,
    weight_bytes_per_element: float | None = None,
    efficiency_rows: ArrayLike | None = None,
    launches: ArrayLike | None = None,
) -> np.ndarray:
    """Seconds for ``count`` GEMMs of (m x k) @ (k x n); operands and output read/written once.
    ``weight_bytes_per_element`` sets the width of the (k x n) operand where it differs from the
    activations' (quantized weights). A grouped GEMM runs its ``count`` GEMMs in ``launches``
    kernels (default: one each) at the tile efficiency of ``efficiency_rows`` rows (default ``m``:
    the groups' thread blocks share the GPU, so a grouped kernel is as efficient as its stacked
    rows)."""
    flops = 2.0 * np.asarray(m, float) * n * k
    w_bytes = bytes_per_element if weight_bytes_per_element is None else weight_bytes_per_element
    traffic = (bytes_per_element * (np.asarray(m, float) * k + np.asarray(m, float) * n)
               + w_bytes * np.asarray(k, float) * n)
    eff = gemm_efficiency(m if efficiency_rows is None else efficiency_rows, n, k, profile, table)
    t = np.maximum(flops / (peak_flops * eff), traffic / (mem_bw * profile.memory_bw_efficiency))
    return count * t + (count if launches is None else launches) * profile.kernel_overhead_s


def memory_bound_time(bytes_moved: ArrayLike, *, mem_bw: float, profile: HardwareProfile, kernels: ArrayLike = 1.0,
                      efficiency: float | None = None) -> np.ndarray:
    """Seconds for element-wise kernels that move ``bytes_moved`` in total over ``kernels`` launches,
    at ``efficiency`` of the bandwidth (default: the profile's element-wise efficiency)."""
    eff = profile.memory_bw_efficiency if efficiency is None else efficiency
    return np.asarray(bytes_moved, float) / (mem_bw * eff) + kernels * profile.kernel_overhead_s
