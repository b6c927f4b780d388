"""Resolve a serving scenario's offload settings into what the engine streams and where memory
goes: GPU-resident weights and layer buffers, host and NVMe bytes, the KV cache's home, and the
per-iteration :class:`~sextant.cost.streaming.Streaming` costs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sextant.cost.inference import (
    Layout,
    attention_flops_per_pair,
    kv_cache_bytes_per_token,
    kv_elements_per_token_layer,
    weight_bytes_per_gpu,
)
from sextant.cost.params import count_params
from sextant.cost.streaming import (
    Streaming,
    expert_popularity,
    hit_rate,
    miss_grid,
    trace_popularity,
)
from sextant.cost.tiers import TierRates, tier_rates
from sextant.errors import InfeasibleError, SpecError
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile
from sextant.spec.serving import ServeOffload, ServeScenario
from sextant.units import GB


@dataclass(frozen=True)
class OffloadPlan:
    """Where one GPU's weights and KV cache live and what streaming them costs."""

    stream: Streaming | None
    gpu_weight_bytes: float  # resident weights plus the layer (or expert) buffers in flight
    host_weight_bytes: float
    nvme_weight_bytes: float
    kv_on_host: bool
    host_kv_capacity_bytes: float  # host memory left for the KV cache (kv_on_host only)
    tiers: TierRates
    description: list[str]
    #: Share of each token's KV bytes kept in host memory when ``kv_on_host`` (below 1 when a
    #: GPU-resident draft model keeps its own cache on the GPU).
    kv_host_share: float = 1.0
    #: The target model runs on the host CPU (Dovetail); the GPU holds only the draft.
    target_on_cpu: bool = False

    @property
    def offloaded(self) -> bool:
        return self.stream is not None or self.target_on_cpu


def _check(scenario: ServeScenario, model: ModelSpec, off: ServeOffload) -> None:
    dep = scenario.deployment
    if off.streamed == "experts" and model.moe is None:
        raise SpecError(f"streaming experts needs a mixture-of-experts model; {model.name} is dense", field="streamed")
    if off.streamed == "experts" and off.weights == "none":
        raise SpecError("streamed: experts needs weights: cpu or nvme", field="streamed")
    if off.routing_trace is not None and model.moe is None:
        raise SpecError("a routing trace needs a mixture-of-experts model", field="routing_trace")
    if dep.pp > 1:
        raise SpecError("offloaded serving is modelled with pp=1 (each GPU streams its tensor-parallel shard)",
                        field="pp")
    if scenario.speculative is not None:
        raise SpecError("speculative decoding with offloaded weights or KV cache is not modelled (with the target on "
                        "the CPU its weights and cache are in host memory already)", field="speculative")
    if scenario.disaggregation is not None:
        raise SpecError("disaggregated prefill and decode with offloading is not modelled", field="disaggregation")


def plan_offload(scenario: ServeScenario, model: ModelSpec, layout: Layout, cluster: ClusterSpec,
                 profile: HardwareProfile, max_tokens: int) -> OffloadPlan:
    """The offload plan of one GPU of a replica (see the module docstring)."""
    off = scenario.offload
    tiers = tier_rates(cluster, profile)
    weights = weight_bytes_per_gpu(model, layout)
    if not off.active:
        return OffloadPlan(None, weights, 0.0, 0.0, False, 0.0, tiers, [])
    _check(scenario, model, off)
    if off.weights == "nvme" and not tiers.has_nvme:
        raise SpecError(f"the {cluster.node.name} node has no NVMe drives to hold the weights", field="weights")
    link = tiers.host_to_gpu * (1.0 if off.pinned else profile.pageable_copy_efficiency)
    # NVMe reads land in pinned bounce buffers; the slower stage binds the pipelined copy.
    rate = min(tiers.nvme_read, tiers.host_to_gpu) if off.weights == "nvme" else link
    layers = model.num_layers
    moe = model.moe
    c = count_params(model)
    experts_bytes = c.expert_params * layout.weight_bytes / layout.tp
    r = off.resident_fraction
    description = []
    dense_stream = expert_pair_bytes = 0.0
    grid_tokens = grid_misses = None
    hits = 1.0
    streamed_bytes = resident = buffers = 0.0
    if off.weights != "none":
        if moe is None:
            streamed_bytes = weights * (1.0 - r)
            resident = weights - streamed_bytes
            buffers = 2.0 * streamed_bytes / layers
            dense_stream = streamed_bytes
        else:
            shares = (trace_popularity(off.routing_trace, c.num_moe_layers, moe.num_experts)
                      if off.routing_trace else expert_popularity(off.expert_popularity, moe.num_experts,
                                                                   off.zipf_exponent))
            per_expert = experts_bytes / (c.num_moe_layers * moe.num_experts)
            if off.streamed == "experts":
                cached = int(math.floor(r * moe.num_experts))
                resident = weights - experts_bytes + per_expert * cached * c.num_moe_layers
                hits = hit_rate(shares, cached)
                layer_fraction = 1.0
            else:
                cached = 0
                resident = weights * r
                dense_stream = (weights - experts_bytes) * (1.0 - r)
                layer_fraction = 1.0 - r
            streamed_bytes = weights - resident
            buffers = 2.0 * (dense_stream / layers + per_expert * (moe.num_experts - cached))
            grid_tokens, grid_misses = miss_grid(shares, moe.top_k, cached, max_tokens)
            # One distribution for every layer (no trace): one layer's misses times the layers.
            grid_misses = grid_misses * layer_fraction * (c.num_moe_layers if shares.ndim == 1 else 1)
            expert_pair_bytes = per_expert
        description.append(
            f"weights: {streamed_bytes / GB:.1f} GB per GPU streamed from {'host DRAM' if off.weights == 'cpu' else 'NVMe'}"
            f" at {rate / GB:.1f} GB/s ({'pinned' if off.pinned or off.weights == 'nvme' else 'pageable'}), "
            f"{resident / GB:.1f} GB resident on the GPU"
            + (f"; expert cache hit rate {hits:.0%}" if off.streamed == "experts" else ""))
    kv_on_host = off.kv_cache == "cpu"
    cpu_per_ctx = to_host = from_host = 0.0
    if kv_on_host:
        per_layer_bytes = kv_elements_per_token_layer(model, layout.tp) * layout.kv_bytes
        pair = attention_flops_per_pair(model, layout.tp)
        cpu_per_ctx = layers * max(per_layer_bytes / tiers.host_read, pair / tiers.cpu_flops)
        kv_token = kv_cache_bytes_per_token(model, layout.kv_bytes, layout.tp)
        to_host = kv_token / tiers.gpu_to_host
        from_host = kv_token / link
        description.append(
            f"KV cache in host memory; decode attention on the CPU at {tiers.host_read / GB:.0f} GB/s of DRAM "
            f"and {tiers.cpu_flops / 1e12:.1f} TFLOP/s per GPU, {off.micro_batches} micro-batch(es) per iteration")
    host_weights = streamed_bytes if off.weights == "cpu" else 0.0
    nvme_weights = streamed_bytes if off.weights == "nvme" else 0.0
    if host_weights > tiers.host_capacity:
        raise InfeasibleError(f"{host_weights / GB:.1f} GB of weights per GPU exceed the host memory share of "
                              f"{tiers.host_capacity / GB:.1f} GB; stream from NVMe or add GPUs")
    if nvme_weights > tiers.nvme_capacity:
        raise InfeasibleError(f"{nvme_weights / GB:.1f} GB of weights per GPU exceed the NVMe share of "
                              f"{tiers.nvme_capacity / GB:.1f} GB")
    stream = Streaming(
        layers=layers, micro_batches=off.micro_batches,
        dense_fetch_s=dense_stream / rate if dense_stream else 0.0,
        expert_fetch_s=expert_pair_bytes / rate if expert_pair_bytes else 0.0,
        miss_tokens=grid_tokens if grid_tokens is not None else np.zeros(0),
        miss_experts=grid_misses if grid_misses is not None else np.zeros(0),
        cpu_per_context_s=cpu_per_ctx, kv_to_host_per_token_s=to_host, kv_from_host_per_token_s=from_host,
        expert_hit_rate=hits,
        fetch_resource="nvme" if off.weights == "nvme" and rate < tiers.host_to_gpu else "host_to_gpu")
    return OffloadPlan(stream, resident + buffers, host_weights, nvme_weights, kv_on_host,
                       tiers.host_capacity - host_weights, tiers, description)



def plan_cpu_target(scenario: ServeScenario, model: ModelSpec, draft: ModelSpec, target: Layout, draft_layout: Layout,
                    tiers: TierRates) -> OffloadPlan:
    """Dovetail (Zhang et al., EMNLP 2025, arXiv:2412.18934): the target model's weights and KV
    cache in host memory, computed by the CPU; the draft model and its cache on the one GPU.
    Between them travel only token ids and the accepted count, which cost nothing here."""
    dep = scenario.deployment
    if dep.tp > 1 or dep.pp > 1 or dep.ep > 1:
        raise SpecError("the CPU target runs beside one GPU's draft: set tp, pp and ep to 1", field="target_device")
    if scenario.offload.active:
        raise SpecError("with the target on the CPU its weights and KV cache are in host memory already; drop the "
                        "offload settings", field="target_device")
    host_weights = weight_bytes_per_gpu(model, target)
    if host_weights > tiers.host_capacity:
        raise InfeasibleError(f"the target's {host_weights / GB:.1f} GB of weights exceed the host memory share of "
                              f"{tiers.host_capacity / GB:.1f} GB")
    target_kv = kv_cache_bytes_per_token(model, target.kv_bytes, 1)
    draft_kv = kv_cache_bytes_per_token(draft, draft_layout.kv_bytes, 1)
    dev = target.dev
    description = [f"target {model.name} on the CPU: {host_weights / GB:.1f} GB of weights and its KV cache in host "
                   f"memory, {dev.mem_bw / GB:.0f} GB/s of DRAM and "
                   f"{dev.gemm_peak / 1e12:.1f} TFLOP/s vector peak; draft {draft.name} on the GPU (Dovetail)"]
    return OffloadPlan(None, 0.0, host_weights, 0.0, True, tiers.host_capacity - host_weights, tiers, description,
                       kv_host_share=target_kv / (target_kv + draft_kv), target_on_cpu=True)
