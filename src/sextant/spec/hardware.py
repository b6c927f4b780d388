"""Hardware: GPUs, links, memory tiers, nodes and clusters. Units are SI (bytes, bytes/s,
FLOP/s, seconds, watts); every catalog entry carries its ``source``.

Link bandwidths are *per GPU and per direction*, the figure a ring collective is bounded by:
NVLink4 on H100 is quoted as 900 GB/s total bidirectional, so 450 GB/s here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sextant.spec.base import Spec

Dtype = Literal["fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4"]


class LinkSpec(Spec):
    """A point-to-point or switched link, as seen by one GPU."""

    name: str
    kind: Literal["nvlink", "xgmi", "pcie", "infiniband", "roce", "ethernet", "c2c", "host"]
    bandwidth_bytes_per_s: float = Field(gt=0, description="Per GPU, per direction.")
    latency_s: float = Field(ge=0, description="Per message/hop (alpha of the alpha-beta model).")
    source: str = ""


class MemoryTier(Spec):
    """One level of the memory hierarchy (HBM, host DRAM, NVMe, CXL). Capacity and bandwidths
    are the tier's aggregate over its ``devices`` (NVMe drives striped as one volume, as
    ZeRO-Infinity and Fuyou use them)."""

    name: Literal["hbm", "gddr", "dram", "nvme", "cxl"]
    capacity_bytes: float = Field(gt=0)
    read_bytes_per_s: float = Field(gt=0)
    write_bytes_per_s: float = Field(gt=0)
    devices: int = Field(default=1, gt=0, description="Drives or modules the aggregate is over.")
    source: str = ""


class HostCPU(Spec):
    """The host processors of a node, as far as offloading needs them: the rate at which they run
    a mixed-precision Adam step (DeepSpeed's vectorized CPU-Adam; ZeRO-Offload, Ren et al. 2021,
    section 4.1). The catalog's figure is nominal (stated per node); ``sextant calibrate``
    measures the host it runs on and the profile's ``host_adam_params_per_s`` replaces it."""

    name: str
    cores: int = Field(gt=0)
    adam_params_per_s: float | None = Field(
        default=None, gt=0,
        description="CPU-Adam, all cores together, parameters per second; default: the nominal DRAM-bound "
                    "rate of the node's host memory (sextant.cost.tiers.cpu_adam_params_per_s).")
    fp32_flops: float | None = Field(default=None, gt=0,
                                     description="Vector peak of all cores (CPU attention); default: nominal.")
    source: str = ""

    @property
    def vector_flops(self) -> float:
        """The stated vector peak, else the nominal cores x 2 GHz x 32 fp32 FLOP per cycle (two
        8-lane AVX2 FMA units per core)."""
        return self.fp32_flops if self.fp32_flops is not None else self.cores * 2.0e9 * 32


class GPUSpec(Spec):
    """One accelerator. ``peak_flops`` holds *dense* (no 2:4 sparsity) tensor-core peaks."""

    name: str
    vendor: Literal["nvidia", "amd", "intel", "arm", "other"]
    architecture: str
    peak_flops: dict[Dtype, float] = Field(description="Dense peak FLOP/s per dtype.")
    memory: MemoryTier
    intra_node_link: LinkSpec | None = Field(
        default=None, description="NVLink/xGMI; None when GPUs talk over PCIe only."
    )
    pcie: LinkSpec
    tdp_w: float = Field(gt=0)
    default_node: str = Field(description="Catalog node that this GPU implies.")
    source: str

    @model_validator(mode="after")
    def _check(self) -> GPUSpec:
        if "bf16" not in self.peak_flops and "fp16" not in self.peak_flops:
            raise ValueError(f"{self.name}: peak_flops needs bf16 or fp16")
        return self

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; an error, never a substitute, if the GPU lacks it."""
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]  # type: ignore[index]
        from sextant.errors import SpecError

        raise SpecError(
            f"{self.name} has no {dtype} tensor cores; use one of {sorted(self.peak_flops)}",
            field="precision",
        )


class NodeSpec(Spec):
    """A server: GPUs, the fabric between them, NICs and host memory tiers."""

    name: str
    gpu: str = Field(description="Catalog GPU name.")
    gpus_per_node: int = Field(gt=0)
    intra_node_link: LinkSpec = Field(description="NVSwitch/NVLink, xGMI, or PCIe between GPUs.")
    nic: LinkSpec = Field(description="One network port; bandwidth per NIC per direction.")
    nics_per_node: int = Field(gt=0)
    host_memory: MemoryTier
    nvme: MemoryTier | None = None
    cxl: MemoryTier | None = Field(default=None, description="CXL-attached memory expander, if any.")
    host_cpu: HostCPU | None = None
    #: Each GPU's link to host memory: None is the GPU's own PCIe link; a chip-to-chip link on
    #: GH200/GB200 (NVLink-C2C).
    host_link: LinkSpec | None = None
    #: GPUs behind one PCIe switch that share its single uplink to the CPU (DGX-2 and DGX A100
    #: pair GPUs on a switch): their host traffic splits that uplink when they transfer at once.
    gpus_per_host_uplink: int = Field(default=1, gt=0)
    source: str

    @property
    def network_bytes_per_s_per_gpu(self) -> float:
        return self.nic.bandwidth_bytes_per_s * self.nics_per_node / self.gpus_per_node


class ClusterSpec(Spec):
    """``num_gpus`` GPUs in identical nodes on one network (rail-optimized fat tree assumed)."""

    node: NodeSpec
    gpu: GPUSpec
    num_gpus: int = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.node.gpu != self.gpu.name:
            raise ValueError(f"node {self.node.name} holds {self.node.gpu}, not {self.gpu.name}")
        return self

    @property
    def gpus_per_node(self) -> int:
        return min(self.node.gpus_per_node, self.num_gpus)
