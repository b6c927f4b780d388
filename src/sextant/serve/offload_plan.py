"""Resolve a serving scenario's offload settings into what the engine streams and where memory
goes: GPU-resident weights and layer buffers, host and NVMe bytes, the KV cache's home, and the
per-iteration :class:`~sextant.cost.streaming.Streaming` costs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sextant.cost.host_compute import host_device
from sextant.cost.inference import (
    attention_rates,
    kv_cache_bytes_per_token,
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
from sextant.cost.tiers import TierRates
from sextant.errors import InfeasibleError, SpecError
from sextant.resolve.serve import ServeContext
from sextant.spec.model import ModelSpec
from sextant.spec.serving import ServeOffload, ServeScenario
from sextant.units import GB, TFLOPS, GiB


@dataclass(frozen=True)
class OffloadPlan:
    """Where one GPU's weights and KV cache live and what streaming them costs."""

    stream: Streaming | None
    gpu_weight_bytes: float  # resident weights plus the layer (or expert) buffers in flight
    host_weight_bytes: float
    nvme_weight_bytes: float
    kv_tier: str  # where the KV cache lives: "gpu", "host" or "nvme"
    kv_capacity_bytes: float  # host memory or NVMe left for the KV cache (a cache off the GPU only)
    tiers: TierRates
    description: list[str]
    #: Share of each token's KV bytes kept off the GPU when the cache is (below 1 when a
    #: GPU-resident draft model keeps its own cache on the GPU).
    kv_host_share: float = 1.0
    #: The target model runs on the host CPU (Dovetail); the GPU holds only the draft.
    target_on_cpu: bool = False

    @property
    def offloaded(self) -> bool:
        return self.stream is not None or self.target_on_cpu

    @property
    def kv_off_gpu(self) -> bool:
        return self.kv_tier != "gpu"


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


@dataclass(frozen=True)
class _WeightStream:
    """Where one GPU's weights go: resident bytes (with the layer or expert buffers), the streamed
    set split between DRAM and NVMe, and what an iteration's fetches cost per byte."""

    resident: float
    buffers: float
    streamed: float
    dense_stream: float  # bytes of whole layers fetched every iteration
    expert_pair_bytes: float  # bytes of one expert of one layer, fetched on a miss
    grid_tokens: np.ndarray | None
    grid_misses: np.ndarray | None
    hits: float
    nvme_share: float


def _weight_stream(ctx: ServeContext, off: ServeOffload, max_tokens: int) -> _WeightStream:
    """The resident and streamed weights of one GPU (dense layers, or a mixture-of-experts model's
    experts with the most popular cached), and the misses per token count an iteration meets."""
    model, layout = ctx.model, ctx.layout
    weights = weight_bytes_per_gpu(model, layout)
    layers, moe, c = model.num_layers, model.moe, count_params(model)
    r = off.resident_fraction
    dense_stream = expert_pair_bytes = streamed = buffers = 0.0
    grid_tokens = grid_misses = None
    hits = 1.0
    resident = weights  # only the KV cache is offloaded: every weight stays on the GPU
    if off.weights != "none" and moe is None:
        streamed = dense_stream = weights * (1.0 - r)
        resident = weights - streamed
        buffers = 2.0 * streamed / layers
    elif off.weights != "none":
        experts_bytes = c.expert_params * layout.weight_bytes / layout.tp
        shares = (trace_popularity(off.routing_trace, c.num_moe_layers, moe.num_experts)
                  if off.routing_trace else expert_popularity(off.expert_popularity, moe.num_experts,
                                                               off.zipf_exponent))
        per_expert = experts_bytes / (c.num_moe_layers * moe.num_experts)
        if off.streamed == "experts":
            cached = int(math.floor(r * moe.num_experts + 1e-9))  # r = k / E names k experts
            resident = weights - experts_bytes + per_expert * cached * c.num_moe_layers
            hits = hit_rate(shares, cached)
            layer_fraction = 1.0
        else:
            cached = 0
            resident = weights * r
            dense_stream = (weights - experts_bytes) * (1.0 - r)
            layer_fraction = 1.0 - r
        streamed = weights - resident
        buffers = 2.0 * (dense_stream / layers + per_expert * (moe.num_experts - cached))
        grid_tokens, grid_misses = miss_grid(shares, moe.top_k, cached, max_tokens)
        # One distribution for every layer (no trace): one layer's misses times the layers.
        grid_misses = grid_misses * layer_fraction * (c.num_moe_layers if shares.ndim == 1 else 1)
        expert_pair_bytes = per_expert
    # The NVMe share of the streamed set goes drive -> pinned host bounce buffer -> GPU; the rest
    # is copied from host DRAM (pinned or pageable).
    nvme_share = (1.0 if off.weights == "nvme"
                  else min(off.nvme_fraction / (1.0 - r), 1.0) if streamed else 0.0)
    return _WeightStream(resident, buffers, streamed, dense_stream, expert_pair_bytes, grid_tokens, grid_misses,
                         hits, nvme_share)


def _kv_stream(ctx: ServeContext, off: ServeOffload, link: float, description: list[str]) -> dict[str, float]:
    """The per-token and per-context costs of a KV cache kept off the GPU (the ``Streaming``
    fields), with its line of the report added to ``description``."""
    tiers, model, layout = ctx.tiers, ctx.model, ctx.layout
    kv: dict[str, float] = dict(cpu_per_context_s=0.0, kv_to_host_per_token_s=0.0, kv_from_host_per_token_s=0.0)
    if off.kv_cache == "gpu":
        return kv
    kv_token = kv_cache_bytes_per_token(model, layout.kv_bytes, layout.tp)
    kv.update(kv_to_host_per_token_s=kv_token / tiers.gpu_to_host, kv_from_host_per_token_s=kv_token / link)
    where = "host memory" if off.kv_cache == "cpu" else "NVMe (read back every decode iteration)"
    if off.kv_cache == "nvme":
        kv.update(kv_nvme_per_context_s=kv_token / tiers.nvme_read, kv_nvme_write_per_token_s=kv_token / tiers.nvme_write)
    if off.kv_attention == "cpu":
        # The CPU priced as a device by the shared attention rates (as Dovetail's CPU target).
        cpu = attention_rates(model, dataclasses.replace(layout, dev=host_device(tiers, ctx.profile, 2.0),
                                                         head_dev=None))
        kv["cpu_per_context_s"] = max(cpu.pair_s, cpu.kv_read_s)
        description.append(
            f"KV cache in {where}; decode attention on the CPU at {tiers.host_read / GB:.0f} GB/s of DRAM "
            f"and {tiers.cpu_flops / TFLOPS:.1f} TFLOP/s per GPU, {off.micro_batches} micro-batch(es) per iteration")
    else:
        kv["kv_link_per_context_s"] = kv_token / link
        description.append(f"KV cache in {where}; decode attention on the GPU, the cache copied in over the host "
                           f"link every iteration, {off.micro_batches} micro-batch(es) per iteration")
    return kv


def plan_offload(ctx: ServeContext, max_tokens: int) -> OffloadPlan:
    """The offload plan of one GPU of a replica (see the module docstring); ``max_tokens``: the
    most tokens one iteration runs (the expert-miss grid's range)."""
    off, tiers, cluster = ctx.scenario.offload, ctx.tiers, ctx.used
    if not off.active:
        return OffloadPlan(None, weight_bytes_per_gpu(ctx.model, ctx.layout), 0.0, 0.0, "gpu", 0.0, tiers, [])
    _check(ctx.scenario, ctx.model, off)
    if (off.weights == "nvme" or off.nvme_fraction > 0) and not tiers.has_nvme:
        raise SpecError(f"the {cluster.node.name} node has no NVMe drives to hold the weights", field="weights")
    if off.kv_cache == "nvme" and not tiers.has_nvme:
        raise SpecError(f"the {cluster.node.name} node has no NVMe drives to hold the KV cache", field="kv_cache")
    link = tiers.host_to_gpu * (1.0 if off.pinned else ctx.profile.pageable_copy_efficiency)
    w = _weight_stream(ctx, off, max_tokens)
    link_s_per_byte = (1.0 - w.nvme_share) / link + w.nvme_share / tiers.host_to_gpu
    nvme_s_per_byte = w.nvme_share / tiers.nvme_read if w.nvme_share else 0.0
    host_weights = w.streamed * (1.0 - w.nvme_share)
    nvme_weights = w.streamed * w.nvme_share
    description = []
    if off.weights != "none":
        rate = 1.0 / max(link_s_per_byte, nvme_s_per_byte)
        source = ("NVMe" if w.nvme_share == 1.0 else "host DRAM" if w.nvme_share == 0.0
                  else f"host DRAM ({host_weights / GiB:.1f} GiB) and NVMe ({nvme_weights / GiB:.1f} GiB)")
        description.append(
            f"weights: {w.streamed / GiB:.1f} GiB per GPU streamed from {source} at {rate / GiB:.1f} GiB/s "
            f"({'pinned' if off.pinned or w.nvme_share == 1.0 else 'pageable'}), {w.resident / GiB:.1f} GiB resident "
            "on the GPU" + (f"; expert cache hit rate {w.hits:.0%}" if off.streamed == "experts" else ""))
    kv = _kv_stream(ctx, off, link, description)
    if host_weights > tiers.host_capacity:
        raise InfeasibleError(f"{host_weights / GiB:.1f} GiB of weights per GPU exceed the host memory share of "
                              f"{tiers.host_capacity / GiB:.1f} GiB; stream from NVMe or add GPUs", resource="host memory")
    if nvme_weights > tiers.nvme_capacity:
        raise InfeasibleError(f"{nvme_weights / GiB:.1f} GiB of weights per GPU exceed the NVMe share of "
                              f"{tiers.nvme_capacity / GiB:.1f} GiB", resource="NVMe")
    stream = Streaming(
        layers=ctx.model.num_layers, micro_batches=off.micro_batches,
        dense_fetch_s=w.dense_stream * link_s_per_byte,
        expert_fetch_s=w.expert_pair_bytes * link_s_per_byte,
        miss_tokens=w.grid_tokens if w.grid_tokens is not None else np.zeros(0),
        miss_experts=w.grid_misses if w.grid_misses is not None else np.zeros(0),
        expert_hit_rate=w.hits, weight_nvme_per_link_s=nvme_s_per_byte / link_s_per_byte, **kv)
    kv_tier = {"gpu": "gpu", "cpu": "host", "nvme": "nvme"}[off.kv_cache]
    left = tiers.host_capacity - host_weights if kv_tier != "nvme" else tiers.nvme_capacity - nvme_weights
    return OffloadPlan(stream, w.resident + w.buffers, host_weights, nvme_weights, kv_tier, left, tiers, description)


def plan_cpu_target(ctx: ServeContext) -> OffloadPlan:
    """Dovetail (Zhang et al., EMNLP 2025, arXiv:2412.18934): the target model's weights and KV
    cache in host memory, computed by the CPU; the draft model and its cache on the one GPU.
    Between them travel only token ids and the accepted count, which cost nothing here."""
    scenario, model, draft, tiers = ctx.scenario, ctx.model, ctx.draft_model, ctx.tiers
    target, draft_layout = ctx.layout, ctx.draft_layout
    dep = scenario.deployment
    if dep.tp > 1 or dep.pp > 1 or dep.ep > 1:
        raise SpecError("the CPU target runs beside one GPU's draft: set tp, pp and ep to 1", field="target_device")
    if scenario.offload.active:
        raise SpecError("with the target on the CPU its weights and KV cache are in host memory already; drop the "
                        "offload settings", field="target_device")
    host_weights = weight_bytes_per_gpu(model, target)
    if host_weights > tiers.host_capacity:
        raise InfeasibleError(f"the target's {host_weights / GiB:.1f} GiB of weights exceed the host memory share of "
                              f"{tiers.host_capacity / GiB:.1f} GiB", resource="host memory")
    target_kv = kv_cache_bytes_per_token(model, target.kv_bytes, 1)
    draft_kv = kv_cache_bytes_per_token(draft, draft_layout.kv_bytes, 1)
    dev = target.dev
    description = [f"target {model.name} on the CPU: {host_weights / GiB:.1f} GiB of weights and its KV cache in host "
                   f"memory, {dev.mem_bw / GB:.0f} GB/s of DRAM and "
                   f"{dev.gemm_peak / TFLOPS:.1f} TFLOP/s vector peak; draft {draft.name} on the GPU (Dovetail)"]
    return OffloadPlan(None, 0.0, host_weights, 0.0, "host", tiers.host_capacity - host_weights, tiers, description,
                       kv_host_share=target_kv / (target_kv + draft_kv), target_on_cpu=True)
