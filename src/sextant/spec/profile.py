"""Hardware profile: how much of the datasheet a GPU achieves in practice.

A profile holds *efficiencies* (fractions of peak) and per-operation overheads. The cost model
multiplies datasheet peaks by them. Built-in profiles ship with the catalog (documented defaults
and parameters fitted to published runs, each stating the data it was fitted on);
``sextant calibrate`` writes the same format from microbenchmarks on the machine at hand.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sextant.spec.base import Spec
from sextant.spec.hardware import GPUSpec, NodeSpec

#: The efficiencies that describe kernels (not links): what a framework's kernel quality scales.
KERNEL_EFFICIENCY_FIELDS = ("gemm_max_efficiency", "flash_attention_efficiency",
                            "unfused_attention_gemm_efficiency", "memory_bw_efficiency")
#: Kernel efficiencies a profile may leave unset (None: fall back to another field).
OPTIONAL_KERNEL_EFFICIENCY_FIELDS = ("loss_bw_efficiency",)


class EfficiencyTable(Spec):
    """Measured efficiency (fraction of the dense peak) on a grid, for one kind of kernel and dtype.

    GEMM tables have the axes (m, n, k); attention tables (seq, head_dim). ``efficiency`` is
    flattened in C order over the axes. Between grid points the cost model interpolates linearly
    in log2 of each coordinate (multilinear); outside the grid it holds the edge value: a measured
    table is trusted only where it was measured, and the edges are the closest evidence.
    """

    dims: list[str] = Field(min_length=1, max_length=4)
    axes: list[list[int]]
    efficiency: list[float]

    @model_validator(mode="after")
    def _check(self) -> EfficiencyTable:
        if len(self.axes) != len(self.dims):
            raise ValueError("one axis per dimension")
        size = 1
        for name, axis in zip(self.dims, self.axes):
            if not axis or any(x <= 0 for x in axis) or sorted(set(axis)) != axis:
                raise ValueError(f"{name}: grid values must be positive and strictly increasing")
            size *= len(axis)
        if len(self.efficiency) != size:
            raise ValueError(f"efficiency must hold {size} values (the product of the axis lengths)")
        if any(not (0 < e <= 1.5) for e in self.efficiency):
            raise ValueError("efficiencies must lie in (0, 1.5]")
        return self

    def scaled(self, factor: float) -> EfficiencyTable:
        return EfficiencyTable(dims=self.dims, axes=self.axes, efficiency=[e * factor for e in self.efficiency])

    @cached_property
    def _grid(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        axes = tuple(np.log2(np.asarray(a, float)) for a in self.axes)
        values = np.asarray(self.efficiency, float).reshape(tuple(len(a) for a in self.axes))
        return axes, values

    def interpolate(self, *coords) -> np.ndarray:
        """Efficiency at arbitrary (broadcast) coordinates, one per dimension."""
        if len(coords) != len(self.dims):
            raise ValueError(f"expected {len(self.dims)} coordinates ({', '.join(self.dims)})")
        axes, values = self._grid
        index, weight = [], []
        for axis, x in zip(axes, coords):
            lx = np.log2(np.clip(np.asarray(x, float), 2.0 ** axis[0], 2.0 ** axis[-1]))
            if len(axis) == 1:
                index.append(np.zeros(lx.shape, dtype=int))
                weight.append(np.zeros(lx.shape))
            else:
                i = np.clip(np.searchsorted(axis, lx, side="right") - 1, 0, len(axis) - 2)
                index.append(i)
                weight.append((lx - axis[i]) / (axis[i + 1] - axis[i]))
        result = 0.0
        for corner in range(2 ** len(axes)):
            w = 1.0
            idx = []
            for d in range(len(axes)):
                up = (corner >> d) & 1
                idx.append(index[d] + (up if len(axes[d]) > 1 else 0))
                w = w * (weight[d] if up else 1.0 - weight[d])
            result = result + w * values[tuple(idx)]
        return np.asarray(result)


class HardwareProfile(Spec):
    """Achieved fractions of peak for one GPU type, global to every workload on it."""

    name: str
    gpu: str = Field(description="Catalog GPU this profile describes.")
    provenance: str = Field(description="Where the numbers come from: defaults, fit, or calibration.")
    #: Fitted to measured runs of this GPU (published runs, or ``sextant calibrate`` on it); False:
    #: documented defaults or another GPU's fit, so its predictions carry a wider error.
    fitted: bool = False

    # Dense matrix multiplies: efficiency(M, N, K) = gemm_max_efficiency * s(M) s(N) s(K),
    # with s(x) = x / (x + gemm_half_dim): small dimensions under-fill the tensor cores
    # (tile quantization, partial waves), large ones saturate.
    gemm_max_efficiency: float = Field(gt=0, le=1)
    gemm_half_dim: float = Field(ge=0)
    # Half-efficiency size of the row dimension M (tokens) alone, where it differs from the
    # others: a GEMM with few rows is bounded by reading its weights long before it under-fills
    # the tensor cores' M tiles (64-128 rows), while N and K also suffer wave quantization over
    # the SMs. None: gemm_half_dim.
    gemm_half_rows: float | None = Field(default=None, ge=0)

    # Fused (flash) attention, forward and backward, fraction of dense peak on long sequences;
    # saturates in head_dim and sequence length like the GEMM curve.
    flash_attention_efficiency: float = Field(gt=0, le=1)
    # Materialized-score attention (batched GEMMs of Megatron-LM 2021): fraction of peak.
    unfused_attention_gemm_efficiency: float = Field(gt=0, le=1)

    # Element-wise, normalization and optimizer kernels: fraction of HBM bandwidth at which they
    # move the bytes the cost model counts for them (calibration: the reference implementation's
    # element-wise ops of one layer, forward and backward).
    memory_bw_efficiency: float = Field(gt=0, le=1)
    # The cross-entropy kernels over the vocabulary (exp-heavy: compute-bound on CPUs); None:
    # the element-wise efficiency.
    loss_bw_efficiency: float | None = Field(default=None, gt=0, le=1)
    # Fixed cost per kernel launch / per operation in the op list (calibration: one nn.Linear
    # call on a tiny input, i.e. module call + dispatch + launch as eager PyTorch issues it).
    kernel_overhead_s: float = Field(ge=0)
    # Measured optimizer step throughput (parameters per second, AdamW on this device); where
    # present it replaces the memory-bound estimate of the optimizer step (unfused optimizers
    # make several passes over their state).
    optimizer_params_per_s: float | None = Field(default=None, gt=0)
    # Measured CPU-Adam throughput of the host (all cores, parameters per second; ``sextant
    # calibrate`` runs PyTorch's Adam on the host). Where present it replaces the node's nominal
    # ``host_cpu.adam_params_per_s`` for optimizer offloading.
    host_adam_params_per_s: float | None = Field(default=None, gt=0)
    # Host time to issue one decoder layer's forward in eager PyTorch (calibration: the reference
    # Llama block of ``sextant measure`` on a one-token input, where the kernels take no time).
    # An inference iteration cannot take less than layers x this on a GPU (the host issues the
    # kernels asynchronously) and takes this much more on a CPU (the host runs them itself).
    # 0 where the engine replays CUDA graphs and the profile says nothing about it.
    layer_overhead_s: float = Field(default=0.0, ge=0)
    # Seconds each kernel of a replayed CUDA graph costs beyond its own work: the host issues one
    # graph launch instead of every kernel, and the GPU starts each node after the previous one.
    # A prior, not fitted: NVIDIA's "Getting Started with CUDA Graphs" (Gray, 2019) times a
    # 2.9 us kernel at 3.8 us a kernel launched from a stream and 3.4 us from a graph.
    graph_kernel_overhead_s: float = Field(default=0.5e-6, ge=0)

    # Collectives: fraction of the per-direction link bandwidth that NCCL bus bandwidth reaches.
    intra_node_bw_efficiency: float = Field(gt=0, le=1)
    network_bw_efficiency: float = Field(gt=0, le=1)
    pcie_bw_efficiency: float = Field(default=0.8, gt=0, le=1)
    # Host-to-device copies from pageable (unpinned) memory, as a fraction of the pinned rate: the
    # driver stages them through a pinned buffer with a CPU memcpy. The default is a prior (CUDA's
    # bandwidthTest typically shows pageable at about half the pinned rate on PCIe Gen4 hosts);
    # ``sextant calibrate`` measures both on a GPU and writes the ratio.
    pageable_copy_efficiency: float = Field(default=0.5, gt=0, le=1)

    # GEMM efficiency of other dtypes relative to the curve above (which describes 16-bit GEMMs):
    # e.g. {"fp8": 0.6} where FP8 GEMMs reach 60% of the fraction of their own (doubled) peak that
    # 16-bit GEMMs reach. Missing dtypes: 1. A measured table of that dtype replaces both.
    gemm_dtype_efficiency: dict[str, float] = Field(default_factory=dict)
    # The same in training, where it differs: an FP8 training recipe (Transformer Engine, torchao
    # float8) scales tensors dynamically (amax tracked per step, weights cast again for every
    # micro-batch), which serving engines' pre-quantized FP8 GEMMs do not. Missing dtypes: the
    # entry above.
    training_gemm_dtype_efficiency: dict[str, float] = Field(default_factory=dict)

    # Measured GEMM efficiency per dtype over (m, n, k) (``sextant calibrate``); where present it
    # replaces the saturating curve above for that dtype.
    gemm_tables: dict[str, EfficiencyTable] = Field(default_factory=dict)
    # Measured fused-attention efficiency per dtype over (seq, head_dim); where present it
    # replaces flash_attention_efficiency for that dtype.
    attention_tables: dict[str, EfficiencyTable] = Field(default_factory=dict)

    def scaled(self, factor: float, label: str) -> HardwareProfile:
        """This profile with every kernel efficiency multiplied by ``factor`` (a framework's
        kernels reaching that fraction of what the profile's do)."""
        if factor == 1.0:
            return self
        return self.model_copy(update={
            "name": f"{self.name} x {label} {factor:g}",
            **{k: getattr(self, k) * factor for k in KERNEL_EFFICIENCY_FIELDS},
            **{k: v * factor for k in OPTIONAL_KERNEL_EFFICIENCY_FIELDS if (v := getattr(self, k)) is not None},
            # Measured tables replace the fields above, so they scale alike.
            "gemm_tables": {d: t.scaled(factor) for d, t in self.gemm_tables.items()},
            "attention_tables": {d: t.scaled(factor) for d, t in self.attention_tables.items()},
        })


PROFILE_FORMAT = "sextant-profile/1"


class CalibrationTrust(Spec):
    """How far a calibration can be trusted (``sextant.calibrate.trust``): the checks it passed or
    failed, each problem in words."""

    trusted: bool
    problems: list[str] = []
    checks: dict[str, float] = {}


class ProfileFile(Spec):
    """A hardware profile as ``sextant calibrate`` writes it: the profile the cost model uses,
    the device itself where the catalog lacks it (a CPU, a new GPU), where the numbers come from,
    and the raw measurements they were fitted on."""

    format: Literal["sextant-profile/1"] = PROFILE_FORMAT
    profile: HardwareProfile
    device: GPUSpec | None = Field(default=None, description="The device, when not a catalog GPU.")
    node: NodeSpec | None = Field(default=None, description="Its host, when not a catalog node.")
    provenance: dict[str, Any] = Field(default_factory=dict)
    fit: dict[str, Any] = Field(default_factory=dict, description="Fit quality per quantity.")
    measured: dict[str, Any] = Field(default_factory=dict, description="Bandwidths, latencies, throughputs.")
    measurements: dict[str, Any] = Field(default_factory=dict, description="Raw benchmark records.")
    #: The calibration's own verdict; None for profiles written by hand or before the checks.
    trust: CalibrationTrust | None = None

    @model_validator(mode="after")
    def _check(self) -> ProfileFile:
        if self.device is not None:
            if self.profile.gpu != self.device.name:
                raise ValueError(f"profile.gpu {self.profile.gpu!r} differs from device.name {self.device.name!r}")
            if self.node is None or self.node.gpu != self.device.name:
                raise ValueError("a profile that brings its own device needs a node holding it")
        return self
