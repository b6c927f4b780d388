"""Built-in GPUs, nodes, networks and hardware profiles, read from ``data/*.yaml``."""

from __future__ import annotations

from functools import cache

from sextant.catalog._loader import load_yaml, lookup
from sextant.errors import SpecError
from sextant.spec.hardware import ClusterSpec, GPUSpec, HostCPU, LinkSpec, MemoryTier, NodeSpec
from sextant.spec.profile import HardwareProfile
from sextant.units import GB, MICROSECOND, TB, TFLOPS, Gbps, GiB

#: Theoretical PCIe bandwidth per lane and direction, bytes/s, after line encoding
#: (PCI-SIG: Gen3 8 GT/s 128b/130b, Gen4 16 GT/s, Gen5 32 GT/s).
PCIE_BYTES_PER_S_PER_LANE = {3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}
PCIE_LATENCY_S = 2 * MICROSECOND


def gpu_names() -> list[str]:
    return sorted(load_yaml("gpus.yaml"))


def node_names() -> list[str]:
    return sorted(load_yaml("nodes.yaml"))


def network_names() -> list[str]:
    return sorted(load_yaml("networks.yaml"))


def _pcie(gen: int, lanes: int) -> LinkSpec:
    return LinkSpec(
        name=f"PCIe Gen{gen} x{lanes}",
        kind="pcie",
        bandwidth_bytes_per_s=PCIE_BYTES_PER_S_PER_LANE[gen] * lanes,
        latency_s=PCIE_LATENCY_S,
        source="PCI-SIG base specification (per direction, after encoding)",
    )


@cache
def get_gpu(name: str) -> GPUSpec:
    key = name.strip().lower()
    entry = lookup(load_yaml("gpus.yaml"), key, kind="GPU", field="gpu")
    mem = entry["memory"]
    link = entry.get("nvlink")
    return GPUSpec(
        name=key,
        vendor=entry["vendor"],
        architecture=entry["architecture"],
        peak_flops={dtype: tflops * TFLOPS for dtype, tflops in entry["tflops"].items()},
        memory=MemoryTier(
            name=mem["kind"],
            capacity_bytes=mem["gib"] * GiB,
            read_bytes_per_s=mem["gb_per_s"] * GB,
            write_bytes_per_s=mem["gb_per_s"] * GB,
            source=entry["source"],
        ),
        intra_node_link=None
        if link is None
        else LinkSpec(
            name=link["name"],
            kind=link.get("kind", "nvlink"),
            bandwidth_bytes_per_s=link["gb_per_s"] * GB,
            latency_s=2 * MICROSECOND,
            source=entry["source"],
        ),
        pcie=_pcie(entry["pcie"]["gen"], entry["pcie"]["lanes"]),
        tdp_w=entry["tdp_w"],
        default_node=entry["default_node"],
        source=entry["source"],
    )


@cache
def get_network(name: str) -> LinkSpec:
    key = name.strip().lower()
    entry = lookup(load_yaml("networks.yaml"), key, kind="network", field="network")
    return LinkSpec(
        name=key,
        kind=entry["kind"],
        bandwidth_bytes_per_s=entry["gbit_per_s"] * Gbps,
        latency_s=entry["latency_us"] * MICROSECOND,
        source=entry["source"],
    )


def _tier(name: str, entry: dict, source: str) -> MemoryTier:
    """A host-side tier from its catalog entry: DRAM/CXL in GiB and GB/s (one figure for both
    directions unless read/write are given), NVMe in TB with read and write GB/s."""
    capacity = entry["tb"] * TB if "tb" in entry else entry["gib"] * GiB
    read = entry.get("read_gb_per_s", entry.get("gb_per_s"))
    write = entry.get("write_gb_per_s", entry.get("gb_per_s"))
    return MemoryTier(name=name, capacity_bytes=capacity, read_bytes_per_s=read * GB, write_bytes_per_s=write * GB,
                      devices=entry.get("drives", 1), source=entry.get("source", source))


@cache
def get_node(name: str) -> NodeSpec:
    key = name.strip().lower()
    entry = lookup(load_yaml("nodes.yaml"), key, kind="node", field="node")
    intra = entry["intra"]
    source = entry["source"]
    cpu = entry.get("host_cpu")
    link = entry.get("host_link")
    return NodeSpec(
        name=key,
        gpu=entry["gpu"],
        gpus_per_node=entry["gpus_per_node"],
        intra_node_link=LinkSpec(
            name=intra["name"],
            kind=intra["kind"],
            bandwidth_bytes_per_s=intra["gb_per_s"] * GB,
            latency_s=intra["latency_us"] * MICROSECOND,
            source=source,
        ),
        nic=get_network(entry["nic"]),
        nics_per_node=entry["nics_per_node"],
        host_memory=_tier("dram", entry["host_memory"], source),
        nvme=_tier("nvme", entry["nvme"], source) if entry.get("nvme") else None,
        cxl=_tier("cxl", entry["cxl"], source) if entry.get("cxl") else None,
        host_cpu=None if cpu is None else HostCPU(
            name=cpu["name"], cores=cpu["cores"], adam_params_per_s=cpu["adam_gparams_per_s"] * 1e9 if "adam_gparams_per_s" in cpu else None,
            fp32_flops=cpu["fp32_tflops"] * 1e12 if "fp32_tflops" in cpu else None, source=cpu.get("source", source)),
        host_link=None if link is None else LinkSpec(
            name=link["name"], kind=link["kind"], bandwidth_bytes_per_s=link["gb_per_s"] * GB,
            latency_s=link.get("latency_us", 2.0) * MICROSECOND, source=link.get("source", source)),
        gpus_per_host_uplink=entry.get("gpus_per_host_uplink", 1),
        source=source,
    )


def _resolve_profile_entry(profiles: dict, key: str, seen: tuple[str, ...] = ()) -> dict:
    """A profile entry with its ``inherit`` chain merged in (the child's keys win)."""
    if key in seen:
        raise SpecError(f"profiles.yaml: inheritance cycle {' -> '.join(seen + (key,))}", field="profile")
    entry = dict(profiles[key])
    parent = entry.pop("inherit", None)
    if parent is None:
        return entry
    return {**_resolve_profile_entry(profiles, parent, seen + (key,)), **entry}


@cache
def get_profile(gpu_name: str) -> HardwareProfile:
    """The built-in profile of a catalog GPU: its own entry, else its architecture's defaults."""
    profiles = load_yaml("profiles.yaml")
    gpu = get_gpu(gpu_name)
    key = gpu.name if gpu.name in profiles else gpu.architecture
    if key not in profiles:
        raise SpecError(f"no built-in profile for {gpu.name} ({gpu.architecture})", field="gpu")
    merged = _resolve_profile_entry(profiles, key)
    merged.pop("gpu", None)
    return HardwareProfile(gpu=gpu.name, **merged)


def build_cluster(
    gpu: str,
    num_gpus: int,
    *,
    gpus_per_node: int | None = None,
    node: str | None = None,
    network: str | None = None,
    nics_per_node: int | None = None,
) -> ClusterSpec:
    """A cluster of ``num_gpus`` GPUs in the GPU's usual node unless ``node`` names another.

    ``gpus_per_node`` shrinks the node (the NICs per GPU stay as in the full node); ``network``
    swaps the NIC type (e.g. RoCE or plain Ethernet instead of InfiniBand).
    """
    gpu_spec = get_gpu(gpu)
    node_spec = get_node(node or gpu_spec.default_node)
    if node_spec.gpu != gpu_spec.name:
        raise SpecError(
            f"node {node_spec.name} holds {node_spec.gpu}, not {gpu_spec.name}; "
            f"pick a node of {gpu_spec.name} or leave --node out",
            field="node",
        )
    if num_gpus <= 0:
        raise SpecError(f"must be positive, got {num_gpus}", field="gpus")
    updates: dict[str, object] = {}
    if gpus_per_node is not None:
        if gpus_per_node <= 0 or gpus_per_node > node_spec.gpus_per_node:
            raise SpecError(
                f"{gpus_per_node} GPUs per node; {node_spec.name} holds 1 to {node_spec.gpus_per_node}",
                field="gpus_per_node",
            )
        nics = node_spec.nics_per_node * gpus_per_node / node_spec.gpus_per_node
        updates.update(gpus_per_node=gpus_per_node, nics_per_node=max(1, round(nics)))
    if network is not None:
        updates["nic"] = get_network(network)
    if nics_per_node is not None:
        updates["nics_per_node"] = nics_per_node
    if updates:
        node_spec = node_spec.model_copy(update=updates)
    return ClusterSpec(node=node_spec, gpu=gpu_spec, num_gpus=num_gpus)
