"""Memory tiers below the GPU, as one GPU sees them: what a byte costs to move between HBM, host
DRAM and NVMe, and how much of each tier is its share.

Bandwidths are per GPU with every GPU of the node transferring at once (the case of data-parallel
offloading, where all ranks fetch and flush in step), so shared resources are divided:

- The host link: the GPU's PCIe link at the profile's ``pcie_bw_efficiency`` (pinned-memory
  ``cudaMemcpyAsync`` reaches 80-90% of the per-direction rate; NVIDIA CUDA C Best Practices
  Guide, "Data Transfer Between Host and Device"), or the node's chip-to-chip link (GH200's
  NVLink-C2C). GPUs behind one PCIe switch share its uplink (``gpus_per_host_uplink``).
- Host DRAM bandwidth, shared by the node's GPUs and the CPU optimizer: a STREAM-like fraction of
  the channel bandwidth (:data:`HOST_DRAM_EFFICIENCY`).
- NVMe: the node's drives striped as one volume (ZeRO-Infinity's DeepNVMe and Fuyou's SPDK both
  reach close to the drives' sequential rates), split evenly over the node's GPUs. One queue per
  volume: a read and a write in flight share it (times add), as the drives' sequential rates are
  quoted for one direction at a time.
- CXL memory expanders, where the node has them, join host DRAM as one pool under weighted
  interleaving (Linux 6.9 ``MPOL_WEIGHTED_INTERLEAVE``: pages spread over the DRAM and CXL NUMA
  nodes in proportion to their bandwidths, so the pool's bandwidth and capacity are the sums;
  Micron and Samsung describe CXL expanders as bandwidth and capacity expansion this way). What
  is offloaded to ``cpu`` lives in that pool.
- The CPU optimizer: the node's CPU-Adam rate (a calibrated term: ``sextant calibrate`` measures
  it and the profile's ``host_adam_params_per_s`` replaces the catalog's nominal figure), split
  over the node's GPUs, since each rank updates its own shard on its share of the cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from sextant.spec.hardware import ClusterSpec, NodeSpec
from sextant.spec.profile import HardwareProfile
from sextant.units import GiB

#: Fraction of the DRAM channels' bandwidth streaming copies reach on two-socket servers (STREAM
#: triad on Xeon and EPYC servers: about 70-80% of the theoretical rate; McCalpin, STREAM results).
HOST_DRAM_EFFICIENCY = 0.75
#: Host memory the operating system, the framework and pinned staging buffers keep for themselves.
HOST_RESERVED_FRACTION = 0.10
#: Bytes a mixed-precision Adam step moves through host DRAM per parameter: the fp32 parameter,
#: momentum and variance and the 16-bit gradient in, the three fp32 arrays and the 16-bit
#: parameter copy out (DeepSpeed's CPU-Adam, ``csrc/adam/cpu_adam.cpp``, one fused pass).
CPU_ADAM_BYTES_PER_PARAM = 28.0
#: Fraction of the DRAM bandwidth a vectorized, multi-threaded CPU-Adam reaches when no host CPU
#: is stated or calibrated: the nominal rate is DRAM bandwidth x this / 28 bytes. A stated prior,
#: not a fit: ``sextant calibrate`` measures the real host and replaces it.
CPU_ADAM_DRAM_EFFICIENCY = 0.5
#: Vector peak of a host whose CPU the catalog does not name: 16 cores x 2 GHz x 32 fp32 FLOP per
#: cycle (see :attr:`HostCPU.vector_flops`). A stated prior for CPU attention.
NOMINAL_HOST_VECTOR_FLOPS = 16 * 2.0e9 * 32
#: What an offloaded training step or serving iteration keeps busy, by name in reports.
RESOURCE_LABELS = {"gpu": "GPU compute", "host_to_gpu": "host-to-GPU link", "gpu_to_host": "GPU-to-host link",
                   "nvme": "NVMe", "cpu": "CPU"}


@dataclass(frozen=True)
class TierRates:
    """Per-GPU rates and capacities of the tiers below HBM (bytes, bytes/s, parameters/s)."""

    host_to_gpu: float
    gpu_to_host: float
    nvme_read: float
    nvme_write: float
    cpu_adam_params_per_s: float
    host_capacity: float
    nvme_capacity: float
    host_link: str
    has_nvme: bool
    host_read: float = 0.0  # DRAM read bandwidth for work on the CPU (CPU attention)
    cpu_flops: float = 0.0  # vector peak for work on the CPU
    host_has_cxl: bool = False  # host memory includes CXL expanders

    def describe(self) -> str:
        nvme = (f"NVMe {self.nvme_read / 1e9:.1f}/{self.nvme_write / 1e9:.1f} GB/s read/write"
                if self.has_nvme else "no NVMe")
        return (f"per GPU: {self.host_link} {self.host_to_gpu / 1e9:.1f} GB/s each way, {nvme}, "
                f"CPU-Adam {self.cpu_adam_params_per_s / 1e9:.2f} G params/s, host memory "
                f"{self.host_capacity / GiB:.0f} GiB" + (" (DRAM and CXL, interleaved)" if self.host_has_cxl else ""))


@dataclass(frozen=True)
class HostPool:
    """Host DRAM and any CXL expanders of one node, interleaved: capacity and bandwidth summed."""

    capacity: float
    read: float
    write: float
    has_cxl: bool


def host_pool(node: NodeSpec) -> HostPool:
    """The node's host memory pool (see the module docstring)."""
    dram, cxl = node.host_memory, node.cxl
    if cxl is None:
        return HostPool(dram.capacity_bytes, dram.read_bytes_per_s, dram.write_bytes_per_s, False)
    return HostPool(dram.capacity_bytes + cxl.capacity_bytes, dram.read_bytes_per_s + cxl.read_bytes_per_s,
                    dram.write_bytes_per_s + cxl.write_bytes_per_s, True)


def cpu_adam_params_per_s(cluster: ClusterSpec, profile: HardwareProfile) -> float:
    """The node's CPU-Adam rate, all cores: calibrated, else stated for the node's CPU, else the
    nominal DRAM-bound figure (see :data:`CPU_ADAM_DRAM_EFFICIENCY`)."""
    if profile.host_adam_params_per_s is not None:
        return profile.host_adam_params_per_s
    node = cluster.node
    if node.host_cpu is not None and node.host_cpu.adam_params_per_s is not None:
        return node.host_cpu.adam_params_per_s
    return host_pool(node).read * CPU_ADAM_DRAM_EFFICIENCY / CPU_ADAM_BYTES_PER_PARAM


def tier_rates(cluster: ClusterSpec, profile: HardwareProfile) -> TierRates:
    """The rates of :class:`TierRates` for one GPU of ``cluster`` (see the module docstring)."""
    node = cluster.node
    sharing = cluster.gpus_per_node
    link = node.host_link or cluster.gpu.pcie
    link_eff = profile.pcie_bw_efficiency if link.kind == "pcie" else 1.0
    link_share = link.bandwidth_bytes_per_s * link_eff / min(node.gpus_per_host_uplink, sharing)
    pool = host_pool(node)
    to_gpu = min(link_share, pool.read * HOST_DRAM_EFFICIENCY / sharing)
    to_host = min(link_share, pool.write * HOST_DRAM_EFFICIENCY / sharing)
    adam = cpu_adam_params_per_s(cluster, profile)
    nvme = node.nvme
    return TierRates(
        host_to_gpu=to_gpu,
        gpu_to_host=to_host,
        nvme_read=nvme.read_bytes_per_s / sharing if nvme else 0.0,
        nvme_write=nvme.write_bytes_per_s / sharing if nvme else 0.0,
        cpu_adam_params_per_s=adam / sharing,
        host_capacity=pool.capacity * (1.0 - HOST_RESERVED_FRACTION) / sharing,
        nvme_capacity=nvme.capacity_bytes / sharing if nvme else 0.0,
        host_link=link.name, host_has_cxl=pool.has_cxl,
        has_nvme=nvme is not None,
        host_read=pool.read * HOST_DRAM_EFFICIENCY / sharing,
        cpu_flops=(node.host_cpu.vector_flops if node.host_cpu else NOMINAL_HOST_VECTOR_FLOPS) / sharing,
    )
