"""Hardware of a scenario: the cluster (catalog GPU, node and network, or a profile file that brings
its own device), the hardware profile its costs use, and the catalog GPU a CUDA device name means."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from sextant.catalog import build_cluster, get_model, get_profile
from sextant.errors import SpecError
from sextant.files import read_user_text
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile, ProfileFile
from sextant.spec.scenario import HardwareRef
from sextant.units import GiB

#: Substrings of ``torch.cuda.get_device_name`` -> catalog GPU (first match wins).
CUDA_NAMES = (("H100 PCIe", "h100-pcie"), ("H100", "h100-sxm"), ("H200", "h200"), ("A100-SXM4-40GB", "a100-40gb"),
              ("A100", "a100-80gb"), ("B200", "b200"), ("L40S", "l40s"), ("L4", "l4"), ("4090", "rtx-4090"),
              ("V100", "v100-32gb"), ("A10G", "a10g"))


def catalog_gpu_for(device_name: str) -> str | None:
    """The catalog GPU a CUDA device name (``torch.cuda.get_device_name``) denotes, if any."""
    for fragment, name in CUDA_NAMES:
        if fragment.lower() in device_name.lower():
            return name
    return None


def model_of(name_or_spec: str | ModelSpec) -> ModelSpec:
    """A scenario's model: a catalog name or config path resolved, a spec passed through."""
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else get_model(name_or_spec)


def load_profile_file(path: str) -> ProfileFile:
    """A profile written by ``sextant calibrate`` (or a bare HardwareProfile JSON). Read once per
    version of the file: a plan resolves the same profile for every GPU count and candidate."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise SpecError(f"no such file {path}", field="profile") from None
    except (OSError, ValueError) as err:
        raise SpecError(f"cannot read {str(path)[:200]}: {getattr(err, 'strerror', None) or err}",
                        field="profile") from None
    return _read_profile_file(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, path)


@lru_cache(maxsize=16)
def _read_profile_file(resolved: str, mtime_ns: int, size: int, path: str) -> ProfileFile:
    text = read_user_text(path, field="profile", kind="hardware profile")
    try:
        data = json.loads(text)
        if isinstance(data, dict) and "format" not in data and "profile" not in data:
            data = {"profile": data}
        return ProfileFile.model_validate(data)
    except (json.JSONDecodeError, ValueError) as err:
        first = str(err).splitlines()
        detail = " ".join(first[:3]) if first else str(err)
        raise SpecError(f"{path} is not a valid hardware profile: {detail}", field="profile") from None


def cluster_and_profile(hw: HardwareRef) -> tuple[ClusterSpec, HardwareProfile]:
    """The cluster and profile of a scenario: catalog entries, or a profile file that may bring
    its own device (a calibrated CPU, a GPU the catalog lacks); ``gpu_memory_gib`` caps the
    device memory."""
    cluster, profile = _cluster_and_profile(hw)
    if hw.gpu_memory_gib is None:
        return cluster, profile
    memory = cluster.gpu.memory.model_copy(update={"capacity_bytes": hw.gpu_memory_gib * GiB})
    return cluster.model_copy(update={"gpu": cluster.gpu.model_copy(update={"memory": memory})}), profile


def _cluster_and_profile(hw: HardwareRef) -> tuple[ClusterSpec, HardwareProfile]:
    if not hw.profile:
        cluster = build_cluster(hw.gpu, hw.gpus, gpus_per_node=hw.gpus_per_node, node=hw.node,
                                network=hw.network, nics_per_node=hw.nics_per_node)
        return cluster, get_profile(cluster.gpu.name)
    loaded = load_profile_file(hw.profile)
    gpu_given = "gpu" in hw.model_fields_set
    if loaded.device is None:
        cluster = build_cluster(hw.gpu if gpu_given else loaded.profile.gpu, hw.gpus, gpus_per_node=hw.gpus_per_node,
                                node=hw.node, network=hw.network, nics_per_node=hw.nics_per_node)
    else:
        if gpu_given and hw.gpu.strip().lower() != loaded.device.name:
            raise SpecError(f"{hw.profile} describes {loaded.device.name}, not {hw.gpu}; leave --gpu out",
                            field="gpu")
        if hw.gpus > loaded.node.gpus_per_node:
            raise SpecError(f"{hw.profile} describes one {loaded.node.name} with {loaded.node.gpus_per_node} "
                            f"device(s); {hw.gpus} asked", field="gpus")
        cluster = ClusterSpec(node=loaded.node, gpu=loaded.device, num_gpus=hw.gpus)
    if loaded.profile.gpu != cluster.gpu.name:
        raise SpecError(f"{hw.profile} was measured on {loaded.profile.gpu}, not {cluster.gpu.name}", field="profile")
    if loaded.trust is not None and not loaded.trust.trusted:  # never used as if it were a good fit
        untrusted = f"UNTRUSTED calibration ({'; '.join(loaded.trust.problems)})"
        if not loaded.profile.provenance.startswith("UNTRUSTED"):
            untrusted += ". " + loaded.profile.provenance
        return cluster, loaded.profile.model_copy(update={"fitted": False, "provenance": untrusted})
    return cluster, loaded.profile


def list_price(gpu: str):
    """The catalog's dated on-demand list price of a GPU type (a
    :class:`~sextant.catalog.prices.GpuPrice`), or None: what a plan costs with when the user
    names no price."""
    from sextant.catalog.prices import gpu_price

    return gpu_price(gpu)
