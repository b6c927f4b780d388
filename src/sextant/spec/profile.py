"""Hardware profile: how much of the datasheet a GPU achieves in practice.

A profile holds *efficiencies* (fractions of peak) and per-operation overheads. The cost model
multiplies datasheet peaks by them. Built-in profiles ship with the catalog (documented defaults
and parameters fitted to published runs, each stating the data it was fitted on);
``sextant calibrate`` writes the same format from microbenchmarks on the machine at hand.
"""

from __future__ import annotations

from pydantic import Field

from sextant.spec.base import Spec

#: The efficiencies that describe kernels (not links): what a framework's kernel quality scales.
KERNEL_EFFICIENCY_FIELDS = ("gemm_max_efficiency", "flash_attention_efficiency",
                            "unfused_attention_gemm_efficiency", "memory_bw_efficiency")


class HardwareProfile(Spec):
    """Achieved fractions of peak for one GPU type, global to every workload on it."""

    name: str
    gpu: str = Field(description="Catalog GPU this profile describes.")
    provenance: str = Field(description="Where the numbers come from: defaults, fit, or calibration.")

    # Dense matrix multiplies: efficiency(M, N, K) = gemm_max_efficiency * s(M) s(N) s(K),
    # with s(x) = x / (x + gemm_half_dim): small dimensions under-fill the tensor cores
    # (tile quantization, partial waves), large ones saturate.
    gemm_max_efficiency: float = Field(gt=0, le=1)
    gemm_half_dim: float = Field(ge=0)

    # Fused (flash) attention, forward and backward, fraction of dense peak on long sequences;
    # saturates in head_dim and sequence length like the GEMM curve.
    flash_attention_efficiency: float = Field(gt=0, le=1)
    # Materialized-score attention (batched GEMMs of Megatron-LM 2021): fraction of peak.
    unfused_attention_gemm_efficiency: float = Field(gt=0, le=1)

    # Element-wise, normalization and optimizer kernels: fraction of HBM bandwidth.
    memory_bw_efficiency: float = Field(gt=0, le=1)
    # Fixed cost per kernel launch / per operation in the op list.
    kernel_overhead_s: float = Field(ge=0)

    # Collectives: fraction of the per-direction link bandwidth that NCCL bus bandwidth reaches.
    intra_node_bw_efficiency: float = Field(gt=0, le=1)
    network_bw_efficiency: float = Field(gt=0, le=1)
    pcie_bw_efficiency: float = Field(default=0.8, gt=0, le=1)

    def scaled(self, factor: float, label: str) -> HardwareProfile:
        """This profile with every kernel efficiency multiplied by ``factor`` (a framework's
        kernels reaching that fraction of what the profile's do)."""
        if factor == 1.0:
            return self
        return self.model_copy(update={
            "name": f"{self.name} x {label} {factor:g}",
            **{k: getattr(self, k) * factor for k in KERNEL_EFFICIENCY_FIELDS},
        })
