"""The host CPU as a compute device: a model's layers running on the CPU from host DRAM, for the
target model of Dovetail's CPU/GPU speculative decoding (Zhang et al., EMNLP 2025,
arXiv:2412.18934: the draft proposes on the GPU, the target verifies on the CPU).

The same cost functions that price a GPU price the CPU (:mod:`sextant.cost.inference`), with the
CPU's peaks and a profile of CPU priors: GEMMs reach :data:`HOST_GEMM_EFFICIENCY` of the cores'
vector peak (16-bit weights are computed in fp32 on CPUs without matrix extensions, so the fp32
vector peak is the peak), memory-bound work reaches the STREAM fraction of the DRAM channels
(:data:`~sextant.cost.tiers.HOST_DRAM_EFFICIENCY`), and every operator pays a dispatch overhead
with nothing to hide it behind (the CPU issues and runs each operator in turn). A verification
step of a few draft tokens is then bound by reading the weights from DRAM, as CPU decoding is.

These are stated priors, not fits, and the CPU target and CPU-side decode attention of offloaded
serving always use them. ``sextant calibrate --device cpu`` measures a host's GEMM efficiency,
DRAM bandwidth and operator overhead into a profile of its own (for a model run on the CPU as
the device); reading such a profile in place of these priors is not built.
"""

from __future__ import annotations

from sextant.cost.layer import Device
from sextant.cost.tiers import HOST_DRAM_EFFICIENCY, TierRates
from sextant.spec.profile import HardwareProfile
from sextant.units import MICROSECOND

#: Fraction of the vector peak a large GEMM reaches on the CPU: oneDNN and MKL SGEMM on AVX2 and
#: AVX-512 server cores run at 70-90% of the FMA peak on large shapes; the low end is taken, as
#: PyTorch eager adds packing and threading overhead per call.
HOST_GEMM_EFFICIENCY = 0.7
#: Matrix size at which a CPU GEMM reaches half its large-shape efficiency: CPU micro-kernels
#: tile a few rows at a time (oneDNN's AVX-512 SGEMM kernels: 6-14 rows by 16-64 columns), so
#: small shapes lose little, unlike tensor-core tiles of 64-256.
HOST_GEMM_HALF_DIM = 4.0
#: Seconds PyTorch's eager CPU dispatcher spends per operator (about 5-10 us per op on server
#: cores); the high end is taken.
HOST_OP_OVERHEAD_S = 10e-6


def host_profile(base: HardwareProfile) -> HardwareProfile:
    """CPU priors in the shape of a hardware profile (``base`` supplies the fields a CPU has no
    use for: link efficiencies). Memory-bound work runs at the full rate of the device's
    ``mem_bw``, which :func:`host_device` takes from the tier rates, already at the STREAM
    fraction."""
    return base.model_copy(update={
        "provenance": "host CPU priors (cost/host_compute.py): GEMMs at "
                      f"{HOST_GEMM_EFFICIENCY:.0%} of the vector peak, DRAM at {HOST_DRAM_EFFICIENCY:.0%}, "
                      f"{HOST_OP_OVERHEAD_S / MICROSECOND:.0f} us per operator",
        "gemm_max_efficiency": HOST_GEMM_EFFICIENCY, "gemm_half_dim": HOST_GEMM_HALF_DIM, "gemm_half_rows": None,
        "flash_attention_efficiency": HOST_GEMM_EFFICIENCY, "unfused_attention_gemm_efficiency": HOST_GEMM_EFFICIENCY,
        "memory_bw_efficiency": 1.0, "loss_bw_efficiency": None,
        "kernel_overhead_s": HOST_OP_OVERHEAD_S, "layer_overhead_s": 0.0,
        "gemm_dtype_efficiency": {}, "gemm_tables": {}, "attention_tables": {},
    })


def host_device(tiers: TierRates, base: HardwareProfile, weight_bytes: float) -> Device:
    """One GPU's share of the node's CPU and host memory as a device: the vector peak and DRAM
    read rate of :func:`~sextant.cost.tiers.tier_rates` (which splits them over the node's GPUs);
    ``weight_bytes``: bytes per weight element as stored in host memory."""
    return Device(gemm_peak=tiers.cpu_flops, attention_peak=tiers.cpu_flops, mem_bw=tiers.host_read, gemm_bytes=2.0,
                  profile=host_profile(base), act_bytes=2.0, host_synchronous=True,
                  weight_bytes=weight_bytes if weight_bytes != 2.0 else None)
