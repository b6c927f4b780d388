"""``sextant calibrate``: run the microbenchmarks on the local device and fit a profile file.

On a GPU the device is the catalog GPU (matched by name, or given); efficiencies are measured
fractions of its datasheet peaks, and the link efficiencies not measurable on one GPU keep the
built-in profile's values. On a CPU there is no datasheet: the device itself is described by
the measurements (its "peak" per dtype is the fastest GEMM measured, its memory bandwidth the
fitted element-wise bandwidth), so the profile file brings its own device and host.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sextant import __version__
from sextant.calibrate import benchmarks, collectives
from sextant.calibrate.fit import attention_table, fit_affine, fit_gemm_curve, gemm_table
from sextant.calibrate.trust import LoadMeter, assess
from sextant.catalog import get_gpu, get_profile
from sextant.cost.layer import CAUSAL_FRACTION, FLASH_BWD_FLOP_RATIO, LOSS_BYTES_PER_LOGIT, elementwise_bytes
from sextant.errors import SpecError
from sextant.files import check_output_path, write_atomic
from sextant.resolve.hardware import catalog_gpu_for
from sextant.spec.hardware import GPUSpec, LinkSpec, MemoryTier, NodeSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import EfficiencyTable, HardwareProfile, ProfileFile

Progress = Callable[[int, int, str], None]

@dataclass(frozen=True)
class Grid:
    """What one calibration run measures."""

    gemm_m: tuple[int, ...]
    gemm_nk: tuple[int, ...]
    gemm_dtypes: tuple[str, ...]
    attention_batch_heads: tuple[int, int]
    attention_seq: tuple[int, ...]
    attention_head_dim: tuple[int, ...]
    elementwise: tuple[int, ...]  # elements
    copies: tuple[int, ...]  # bytes
    disk_bytes: int
    optimizer_params: int
    allreduce: tuple[int, ...]  # bytes
    budget_s: float  # per measured point

    def gemm_shapes(self) -> list[tuple[int, int, int]]:
        return [(m, n, k) for m in self.gemm_m for n in self.gemm_nk for k in self.gemm_nk]

    def attention_shapes(self) -> list[tuple[int, int, int, int]]:
        b, h = self.attention_batch_heads
        return [(b, h, s, d) for s in self.attention_seq for d in self.attention_head_dim]

    def describe(self) -> dict:
        return {"gemm_m": list(self.gemm_m), "gemm_n_k": list(self.gemm_nk), "gemm_dtypes": list(self.gemm_dtypes),
                "attention_b_h_s_d": [list(a) for a in self.attention_shapes()],
                "elementwise_elements": list(self.elementwise),
                "copy_bytes": list(self.copies), "disk_bytes": self.disk_bytes,
                "optimizer_params": self.optimizer_params, "allreduce_bytes": list(self.allreduce),
                "budget_s_per_point": self.budget_s}


def grid_for(device: str, quick: bool) -> Grid:
    if device == "cpu":
        return Grid(
            gemm_m=(1, 16, 128, 512, 2048) if quick else (1, 16, 64, 256, 1024, 2048, 4096),
            gemm_nk=(64, 256, 1024, 4096) if quick else (64, 128, 256, 512, 1024, 2048, 4096),
            gemm_dtypes=("fp32", "bf16"),
            attention_batch_heads=(2, 8),
            attention_seq=(128, 256, 512) if quick else (128, 256, 512, 1024, 2048),
            attention_head_dim=(32, 64, 128),
            elementwise=(2**12, 2**16, 2**20, 2**23) if quick else (2**10, 2**12, 2**16, 2**20, 2**23, 2**25),
            copies=(), disk_bytes=(64 if quick else 512) * 2**20,
            optimizer_params=(4 if quick else 32) * 2**20,
            allreduce=(2**12, 2**18, 2**22) if quick else (2**10, 2**12, 2**16, 2**20, 2**22, 2**24),
            budget_s=0.05 if quick else 0.2,
        )
    return Grid(
        gemm_m=(1, 16, 64, 256, 1024, 4096, 16384) if quick else (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
        gemm_nk=(256, 1024, 4096, 16384) if quick else (128, 256, 512, 1024, 2048, 4096, 8192, 16384),
        gemm_dtypes=("bf16", "fp16", "fp32"),
        attention_batch_heads=(2, 16),
        attention_seq=(512, 2048, 8192) if quick else (256, 512, 1024, 2048, 4096, 8192, 16384),
        attention_head_dim=(64, 128) if quick else (64, 96, 128, 192, 256),
        elementwise=(2**16, 2**20, 2**24, 2**27) if quick else (2**12, 2**16, 2**20, 2**22, 2**24, 2**26, 2**28),
        copies=(2**20, 2**26) if quick else (2**16, 2**20, 2**24, 2**26, 2**28),
        disk_bytes=(256 if quick else 2048) * 2**20,
        optimizer_params=(16 if quick else 256) * 2**20,
        allreduce=(2**16, 2**20, 2**24) if quick else (2**12, 2**16, 2**20, 2**24, 2**26, 2**28),
        budget_s=0.05 if quick else 0.2,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: str, grid: Grid, quick: bool) -> dict:
    info = {
        "tool": f"sextant {__version__} calibrate", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": cpu_model_name(), "cpu_threads": torch.get_num_threads(),
        "quick": quick, "grid": grid.describe(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), sm_count=props.multi_processor_count,
                    device_memory_bytes=props.total_memory, gpus_visible=torch.cuda.device_count())
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info["driver"] = "unknown"
    else:
        info["device_name"] = cpu_model_name()
    return info


def _attention_efficiency(records: list[dict], peak: float) -> tuple[float, EfficiencyTable, list[float]]:
    """Executed attention FLOP/s (cost-model convention: causal half, backward 2.5x the forward)
    over the peak, forward and backward together: the median (the profile's scalar) and the
    table over (seq, head_dim)."""
    effs, by_shape = [], {}
    for r in records:
        flops_fwd = 2.0 * r["batch"] * r["heads"] * r["seq"] ** 2 * 2 * r["head_dim"] * CAUSAL_FRACTION
        eff = (1 + FLASH_BWD_FLOP_RATIO) * flops_fwd / r["forward_backward_s"] / peak
        effs.append(eff)
        by_shape.setdefault((r["seq"], r["head_dim"]), []).append(eff)
    return float(np.median(effs)), attention_table(by_shape), effs


def _elementwise_efficiencies(layer_ew: dict, loss: dict, bandwidth: float, op_s: float) -> tuple[float, float]:
    """Fractions of ``bandwidth`` at which the measured element-wise work moves the bytes the
    cost model counts for it (:func:`elementwise_bytes` for a layer, forward plus a backward of
    twice the bytes; :data:`LOSS_BYTES_PER_LOGIT` per logit forward and backward), after the
    per-operation overhead the cost model charges separately."""
    probe = ModelSpec(name="elementwise-probe", source="calibration probe", hidden_size=layer_ew["hidden"],
                      num_layers=1, num_heads=layer_ew["heads"], num_kv_heads=layer_ew["kv_heads"],
                      head_dim=layer_ew["head_dim"], ffn_hidden_size=layer_ew["ffn"], vocab_size=2)
    act_bytes = 4.0 if layer_ew["dtype"] == "fp32" else 2.0
    fwd_bytes, kernels = elementwise_bytes(probe, layer_ew["tokens"], 1, False, ffn_local=layer_ew["ffn"],
                                           dropout=False, act_bytes=act_bytes)
    layer_time = max(layer_ew["seconds"] - 3 * kernels * op_s, 0.1 * layer_ew["seconds"])
    layer_eff = 3.0 * float(fwd_bytes) / (layer_time * bandwidth)
    loss_time = max(loss["seconds"] - 6 * op_s, 0.1 * loss["seconds"])
    loss_eff = 2.0 * LOSS_BYTES_PER_LOGIT * loss["tokens"] * loss["vocab"] / (loss_time * bandwidth)
    return min(1.0, layer_eff), min(1.0, loss_eff)


def _cpu_device(name: str, peaks: dict[str, float], mem_bw: float, disk: dict, threads: int, date: str,
                link: tuple[float, float]) -> tuple[GPUSpec, NodeSpec]:
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    source = f"measured by sextant calibrate on {date}"
    dram = MemoryTier(name="dram", capacity_bytes=float(total_ram), read_bytes_per_s=mem_bw, write_bytes_per_s=mem_bw,
                      source=source)
    host_copy = LinkSpec(name="host memory copy", kind="host", bandwidth_bytes_per_s=mem_bw, latency_s=0.0, source=source)
    model = cpu_model_name().lower()
    vendor = "intel" if "intel" in model else "amd" if "amd" in model else "arm" if platform.machine().startswith(("arm", "aarch")) else "other"
    device = GPUSpec(
        name=name, vendor=vendor, architecture=f"cpu-{platform.machine()}", peak_flops=peaks, memory=dram,
        intra_node_link=None, pcie=host_copy, tdp_w=15.0 * threads, default_node=f"{name}-host",
        source=f"{source}; peak_flops = fastest GEMM measured per dtype; tdp_w nominal (15 W per thread, not measured)",
    )
    disk_tier = MemoryTier(name="nvme", capacity_bytes=float(shutil.disk_usage(disk["directory"]).total),
                           read_bytes_per_s=disk["read_bytes_per_s"], write_bytes_per_s=disk["write_bytes_per_s"],
                           source=f"{source} (local disk, {disk['directory']})")
    latency, bus_bw = link
    node = NodeSpec(
        name=f"{name}-host", gpu=name, gpus_per_node=1,
        intra_node_link=LinkSpec(name="shared memory (gloo)", kind="host", bandwidth_bytes_per_s=bus_bw, latency_s=latency,
                                 source=source),
        nic=LinkSpec(name="10GbE (nominal, not measured)", kind="ethernet", bandwidth_bytes_per_s=1.25e9, latency_s=10e-6,
                     source="nominal: a one-host profile measures no network"),
        nics_per_node=1, host_memory=dram, nvme=disk_tier, source=source,
    )
    return device, node


def calibrate(device: str = "cpu", *, quick: bool = False, gpu: str | None = None, disk_dir: str | None = None,
              progress: Progress | None = None, collectives_world: int = 2) -> ProfileFile:
    """Run the benchmarks of ``grid_for(device, quick)`` and fit a profile file."""
    if device not in ("cpu", "cuda"):
        raise SpecError(f"device must be cpu or cuda, got {device!r}", field="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("no CUDA device is visible to PyTorch; use --device cpu", field="device")
    if disk_dir is not None and not os.path.isdir(disk_dir):
        raise SpecError(f"no such directory {disk_dir}", field="disk_dir")
    started = time.perf_counter()
    grid = grid_for(device, quick)
    dev = "cuda:0" if device == "cuda" else "cpu"
    gemm_dtypes = list(grid.gemm_dtypes)
    nccl = device == "cuda" and torch.cuda.device_count() >= 2
    total = (len(grid.gemm_shapes()) * len(gemm_dtypes) + len(grid.attention_shapes()) + len(grid.elementwise)
             + len(grid.copies) + 1 + 1 + 1 + (2 if device == "cuda" else 1) + 1)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, label)

    torch.manual_seed(0)
    load = LoadMeter().start()
    gemms = {d: benchmarks.gemm(dev, d, grid.gemm_shapes(), tick, grid.budget_s) for d in gemm_dtypes}
    primary = "fp32" if device == "cpu" else "bf16"
    att = benchmarks.attention(dev, primary, grid.attention_shapes(), tick, grid.budget_s)
    ew = benchmarks.elementwise(dev, grid.elementwise, tick, grid.budget_s)
    probe_tokens = 1024 if device == "cpu" else 8192
    layer_ew = benchmarks.layer_elementwise(dev, primary, probe_tokens, grid.budget_s)
    loss = benchmarks.cross_entropy(dev, probe_tokens, 8192 if device == "cpu" else 32768, grid.budget_s)
    tick("layer element-wise ops and cross-entropy")
    overhead = benchmarks.op_overhead(dev, grid.budget_s)
    overhead["layer_forward_s"] = benchmarks.layer_overhead(dev, grid.budget_s)
    tick("op overhead")
    copy_records = benchmarks.copies(dev, grid.copies, tick, grid.budget_s) if device == "cuda" else []
    disk = benchmarks.disk(disk_dir, grid.disk_bytes, tick)
    opt_host = benchmarks.optimizer("cpu", grid.optimizer_params, tick, grid.budget_s)
    opt_device = benchmarks.optimizer(dev, grid.optimizer_params, tick, grid.budget_s) if device == "cuda" else None
    backend, world = ("nccl", min(torch.cuda.device_count(), 8)) if nccl else ("gloo", collectives_world)
    ar = collectives.all_reduce(backend, world, list(grid.allreduce))
    tick(f"all-reduce ({backend}, {world} ranks)")
    layer_again = benchmarks.layer_overhead(dev, grid.budget_s)  # the same probe at the end: a repeat
    foreign_load = load.share()

    # ---- fit ---------------------------------------------------------------------------------
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    ew_alpha, ew_bw, ew_r2 = fit_affine([r["bytes"] for r in ew], [r["seconds"] for r in ew])
    ar_alpha, ar_algbw, ar_r2 = fit_affine([r["bytes"] for r in ar], [r["seconds"] for r in ar])
    ar_busbw = ar_algbw * 2 * (world - 1) / world  # ring: each byte crosses 2(n-1)/n links (nccl-tests)
    if device == "cpu":
        peaks = {d: max(r["flops_per_s"] for r in gemms[d]) for d in gemm_dtypes}
        name = cpu_device_name()
        device_spec, node_spec = _cpu_device(name, peaks, ew_bw, disk, torch.get_num_threads(), date, (ar_alpha, ar_busbw))
        base = None
    else:
        name = gpu or catalog_gpu_for(torch.cuda.get_device_name(0))
        if name is None:
            raise SpecError(f"{torch.cuda.get_device_name(0)!r} matches no catalog GPU; pass --gpu NAME", field="gpu")
        device_spec, node_spec = None, None
        spec = get_gpu(name)
        name = spec.name
        peaks = {d: spec.peak(d) for d in gemm_dtypes}
        base = get_profile(name)
    bandwidth = ew_bw if device == "cpu" else get_gpu(name).memory.read_bytes_per_s
    mem_bw_eff, loss_eff = _elementwise_efficiencies(layer_ew, loss, bandwidth, overhead["linear_call_s"])
    tables = {d: gemm_table(gemms[d], peaks[d]) for d in gemm_dtypes}
    curve = fit_gemm_curve(gemms[primary], peaks[primary])
    att_eff, att_table, att_effs = _attention_efficiency(att, peaks[primary])
    measured: dict = {
        "memory_bw_bytes_per_s": ew_bw, "op_overhead_s": overhead,
        "host_adam_params_per_s": opt_host["params_per_s"],
        "disk_read_bytes_per_s": disk["read_bytes_per_s"], "disk_write_bytes_per_s": disk["write_bytes_per_s"],
        "allreduce": {"backend": backend, "ranks": world, "latency_s": ar_alpha, "bus_bw_bytes_per_s": ar_busbw},
    }
    pcie_eff = None
    if opt_device:
        measured["device_adam_params_per_s"] = opt_device["params_per_s"]
    if copy_records:
        largest = max(r["bytes"] for r in copy_records)
        for r in copy_records:
            if r["bytes"] == largest:
                kind = "pinned" if r["pinned"] else "pageable"
                measured[f"h2d_{kind}_bytes_per_s"] = r["bytes"] / r["h2d_s"]
                measured[f"d2h_{kind}_bytes_per_s"] = r["bytes"] / r["d2h_s"]
        pcie_eff = min(1.0, measured["h2d_pinned_bytes_per_s"] / get_gpu(name).pcie.bandwidth_bytes_per_s)
    fields = {
        "gemm_max_efficiency": curve["gemm_max_efficiency"], "gemm_half_dim": curve["gemm_half_dim"],
        "flash_attention_efficiency": min(1.0, att_eff), "memory_bw_efficiency": mem_bw_eff,
        "loss_bw_efficiency": loss_eff,
        "kernel_overhead_s": overhead["linear_call_s"], "gemm_tables": tables,
        "attention_tables": {primary: att_table},
        "optimizer_params_per_s": (opt_device or opt_host)["params_per_s"],
        "host_adam_params_per_s": opt_host["params_per_s"],
        "layer_overhead_s": overhead["layer_forward_s"],
    }
    if base is None:
        profile = HardwareProfile(
            name=f"{name}-calibrated", gpu=name, fitted=True,
            provenance=f"sextant calibrate{' --quick' if quick else ''} on {date}, {cpu_model_name()}, "
                       f"{torch.get_num_threads()} threads, torch {torch.__version__}",
            unfused_attention_gemm_efficiency=min(1.0, att_eff), intra_node_bw_efficiency=1.0,
            network_bw_efficiency=1.0, **fields)
    else:
        if pcie_eff is not None:
            fields["pcie_bw_efficiency"] = pcie_eff
            fields["pageable_copy_efficiency"] = min(
                1.0, measured["h2d_pageable_bytes_per_s"] / measured["h2d_pinned_bytes_per_s"])
        profile = base.model_copy(update={
            **fields, "name": f"{name}-calibrated", "fitted": True,
            "provenance": f"sextant calibrate{' --quick' if quick else ''} on {date}, "
                          f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; link efficiencies "
                          f"from the built-in profile ({base.name}), not measurable here"})
        profile = HardwareProfile.model_validate(profile.model_dump())
    fit = {
        "gemm_curve": curve,
        "elementwise": {"latency_s": ew_alpha, "bandwidth_bytes_per_s": ew_bw, "r_squared": ew_r2},
        "allreduce": {"latency_s": ar_alpha, "alg_bw_bytes_per_s": ar_algbw, "r_squared": ar_r2},
        "attention_efficiency_per_point": att_effs,
        "elementwise_efficiency": {"layer_ops": mem_bw_eff, "cross_entropy": loss_eff,
                                   "bandwidth_bytes_per_s": bandwidth},
    }
    info = provenance(device, grid, quick)
    info["duration_s"] = round(time.perf_counter() - started, 1)
    trust = assess(gemm_r2=curve["r_squared"], elementwise_r2=ew_r2,
                   repeats={"per_layer_overhead": (overhead["layer_forward_s"], layer_again)},
                   foreign_load=foreign_load)
    if not trust.trusted:
        profile = profile.model_copy(update={"fitted": False,
                                             "provenance": f"UNTRUSTED calibration ({'; '.join(trust.problems)}). "
                                                           + profile.provenance})
    return ProfileFile(profile=profile, trust=trust, device=device_spec, node=node_spec, provenance=info, fit=fit, measured=measured,
                       measurements={"gemm": [r for d in gemm_dtypes for r in gemms[d]], "attention": att,
                                     "elementwise": ew, "layer_elementwise": layer_ew, "cross_entropy": loss,
                                     "op_overhead": overhead, "copies": copy_records, "disk": disk,
                                     "optimizer": [o for o in (opt_host, opt_device) if o], "allreduce": ar})


def cpu_device_name() -> str:
    return f"cpu-{_slug(cpu_model_name())}-{torch.get_num_threads()}t"


def cpu_profile_path() -> str:
    """Where ``sextant calibrate --device cpu`` writes this CPU's profile by default."""
    return os.path.join(DEFAULT_PROFILE_DIR, f"{cpu_device_name()}.json")


def default_output(profile: ProfileFile) -> str:
    return os.path.join(DEFAULT_PROFILE_DIR, f"{profile.profile.gpu}.json")


def write(profile: ProfileFile, path: str) -> str:
    """Write the profile file atomically; the default folder (``profiles/``) is made if missing,
    a folder the user named must exist (:func:`sextant.files.check_output_path`)."""
    directory = os.path.dirname(path)
    if directory == DEFAULT_PROFILE_DIR:
        make_profile_dir()
    write_atomic(path, profile.model_dump_json(indent=1), field="--out")
    return path


#: Where calibrated profiles go unless ``--out`` says otherwise.
DEFAULT_PROFILE_DIR = "profiles"


def check_profile_dir() -> None:
    """Before the benchmarks run: ``profiles/`` is a writable folder, or can be made here (it is
    made only when the profile is written, so a failed command leaves nothing behind)."""
    folder = Path(DEFAULT_PROFILE_DIR)
    if folder.exists() and not folder.is_dir():
        raise SpecError(f"{DEFAULT_PROFILE_DIR} is a file, not the folder profiles go to; pass --out", field="--out")
    probe = folder / "calibrated.json" if folder.is_dir() else Path(f"{DEFAULT_PROFILE_DIR}-folder-probe.json")
    check_output_path(probe, field="--out")


def make_profile_dir() -> None:
    """Create ``profiles/`` when the profile is written there."""
    try:
        os.makedirs(DEFAULT_PROFILE_DIR, exist_ok=True)
    except OSError as err:
        raise SpecError(f"cannot create the folder {DEFAULT_PROFILE_DIR}/ for the profile: {err.strerror or err}; "
                        "pass --out", field="--out") from None


__all__ = ["Grid", "calibrate", "default_output", "grid_for", "write"]
