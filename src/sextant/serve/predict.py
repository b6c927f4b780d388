"""``predict serve``: resolve a scenario, simulate it, and summarise latency and throughput."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import BaseModel

from sextant.cost.inference import speculative_tokens_per_step
from sextant.cost.params import count_params
from sextant.errors import SpecError
from sextant.serve.deploy import Deployment, deploy_scenario, kv_transfer_seconds
from sextant.serve.engine import EngineConfig
from sextant.serve.iteration import IterationCost, Speculation
from sextant.serve.requests import Requests, requests_for
from sextant.serve.simulator import SimulationOutput, simulate
from sextant.spec.limits import MAX_SERVING_GPUS
from sextant.spec.serving import Scheduler, ServeScenario
from sextant.units import GiB

PART_LABELS = {
    "gemm": "weight GEMMs (incl. output head)",
    "elementwise": "element-wise kernels and embedding",
    "communication": "tensor/expert/pipeline communication and KV swaps",
    "attention": "attention (KV-cache reads in decode)",
    "offload_wait": "waiting on weight streaming, CPU attention or KV copies",
    "host_overhead": "host and engine overhead",
}


class Percentiles(BaseModel):
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: np.ndarray) -> Percentiles:
        if len(values) == 0:
            return cls(mean=0.0, p50=0.0, p90=0.0, p99=0.0)
        ordered = np.sort(values)
        p50, p90, p99 = (_percentile(ordered, q) for q in (0.5, 0.9, 0.99))
        return cls(mean=float(values.mean()), p50=p50, p90=p90, p99=p99)


def _percentile(ordered: np.ndarray, q: float) -> float:
    """NumPy's default (linear, Hyndman and Fan's 7th) quantile ``q`` of sorted values, with its
    rounding: ``np.percentile`` costs ~0.2 ms a call on small arrays, most of a candidate's
    summary in ``plan serve``."""
    last = len(ordered) - 1
    at = last * q
    if at >= last:
        return float(ordered[last])
    below = int(math.floor(at))
    gamma = at - below
    a, b = float(ordered[below]), float(ordered[below + 1])
    return b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma


class StageLatency(BaseModel):
    """Latency of the requests that arrived during one load stage (as inference-perf reports
    per stage)."""

    stage: int
    rate: float
    requests: int
    output_tokens_mean: float
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    e2e_ms: Percentiles
    itl_mean_ms: float


class ServeResult(BaseModel):
    model: str
    gpu: str
    gpus: int
    tp: int
    pp: int
    ep: int
    replicas: int
    prefill_replicas: int
    precision: str
    kv_precision: str
    batching: str
    max_batch: int
    token_budget: int
    framework: str | None
    num_requests: int
    offline: bool
    makespan_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    input_tokens_per_s: float
    requests_per_s: float
    #: Model FLOPs per second per GPU at 2 x active parameters per processed token (prompt and
    #: generated), the convention of ZeRO-Inference's and FlexGen's TFLOP/s figures; attention's
    #: own FLOPs are not counted.
    model_tflops_per_gpu: float
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    e2e_ms: Percentiles
    #: Mean inter-token latency weighted by tokens: all decode time over all tokens after the
    #: first (vLLM's benchmark "Mean ITL"; TPOT's mean weighs every request alike instead).
    itl_mean_ms: float = 0.0
    slo_attainment: float
    goodput_requests_per_s: float
    kv_cache_peak_fraction: float
    kv_cache_capacity_tokens: int
    preemptions: int
    #: GiB per GPU by part (the key says gb for the scripts that read it; every memory figure Sextant
    #: reports, training and serving, is in GiB).
    memory_gb_per_gpu: dict[str, float]
    #: Per GPU: GiB held in GPU memory, host DRAM and NVMe (offloaded serving), with each tier's
    #: capacity share in ``tier_capacity_gb``.
    memory_gb_per_tier: dict[str, float]
    tier_capacity_gb: dict[str, float]
    time_breakdown_s: dict[str, float]
    bottleneck: str
    #: The resource busiest over the run: ``gpu``, ``host_to_gpu`` (weights or KV over the host
    #: link), ``nvme``, ``cpu`` (CPU attention) or ``gpu_to_host`` (KV written to the host).
    binding_resource: str
    resource_busy_s: dict[str, float]
    iterations: int
    profile: str
    #: Whether the hardware profile was fitted to measured runs of this GPU.
    profile_fitted: bool = False
    assumptions: list[str]
    #: Per load stage, when the workload runs in stages.
    stages: list[StageLatency] = []
    #: The workload simulated, every key with its value (defaults included), so that a saved
    #: result can be read on its own.
    workload: dict[str, Any] = {}


def _gpu_seconds_label(parts: dict[str, float]) -> str:
    total = sum(parts.values()) or 1.0
    ranked = sorted(parts.items(), key=lambda kv: kv[1], reverse=True)
    text = f"{PART_LABELS[ranked[0][0]]}: {ranked[0][1] / total:.0%} of engine time"
    if len(ranked) > 1 and ranked[1][1] > 0.1 * total:
        text += f"; then {PART_LABELS[ranked[1][0]]} ({ranked[1][1] / total:.0%})"
    return text


def engine_config(res: Deployment, role: str) -> tuple[EngineConfig, IterationCost]:
    ctx = res.ctx
    sched = ctx.scenario.scheduler
    inst = res.instance
    spec = ctx.scenario.speculative
    pcie = ctx.cluster.gpu.pcie
    swap_s_per_token = inst.kv_bytes_per_token / (pcie.bandwidth_bytes_per_s * ctx.profile.pcie_bw_efficiency)
    swap_blocks = int(sched.swap_space_gb * 1e9 // (inst.kv_bytes_per_token * sched.block_size)) \
        if sched.preemption == "swap" else 0
    speculation = None
    if spec is not None:
        speculation = Speculation(IterationCost(ctx.draft_model, ctx.draft_layout, sched.max_batch), spec.num_tokens,
                                  spec.acceptance_rate)
    cost = IterationCost(ctx.model, inst.layout, sched.max_batch * ((spec.num_tokens + 1) if spec else 1),
                         stream=inst.offload.stream, on_host=inst.offload.target_on_cpu, speculation=speculation,
                         graph_max_tokens=graph_max_tokens(sched))
    cfg = EngineConfig(
        batching=sched.batching, max_batch=sched.max_batch, token_budget=res.token_budget,
        block_size=sched.block_size, capacity_blocks=inst.kv_capacity_blocks, reserve=engine_reserve(ctx.scenario),
        preemption=sched.preemption, swap_blocks=swap_blocks, swap_s_per_token=swap_s_per_token, role=role,
        tokens_per_step=speculation.tokens_per_step if speculation else 1.0,
        prefix_caching=sched.prefix_caching, async_scheduling=sched.async_scheduling,
    )
    return cfg, cost


def graph_max_tokens(sched: Scheduler) -> int:
    """Largest batch (tokens) that replays a CUDA graph; 0 when the engine runs eagerly. vLLM V1
    captures up to min(2 x max_num_seqs, 512) by default (vllm/config/vllm.py)."""
    if not sched.cuda_graphs:
        return 0
    return sched.cuda_graph_max_tokens or min(2 * sched.max_batch, 512)


def run(scenario: ServeScenario, requests: Requests | None = None, *, trace: bool = False,
        progress: Callable[[int, int], None] | None = None) -> tuple[Deployment, Requests, SimulationOutput]:
    if scenario.hardware.gpus > MAX_SERVING_GPUS:
        raise SpecError(f"{scenario.hardware.gpus:,} GPUs is more than the {MAX_SERVING_GPUS:,} a serving simulation "
                        "models replica by replica; simulate one group of replicas and scale its throughput",
                        field="gpus")
    requests = requests if requests is not None else requests_for(scenario.workload)
    longest = int((requests.input_tokens + requests.output_tokens).max())
    res = deploy_scenario(scenario, longest, int(requests.input_tokens.max()))
    sched = res.scenario.scheduler
    if sched.batching == "continuous" and int(requests.input_tokens.max()) > res.token_budget:
        raise SpecError(f"a {int(requests.input_tokens.max())}-token prompt exceeds the token budget "
                        f"{res.token_budget}; raise --token-budget or use --batching chunked", field="token_budget")
    if sched.batching == "continuous" and not engine_reserve(res.scenario) and longest > res.token_budget:
        # A preempted request is prefilled again with what it generated, in one iteration; vLLM's
        # SchedulerConfig refuses max_num_batched_tokens below max_model_len without chunked prefill.
        raise SpecError(f"requests of up to {longest} tokens (prompt and output) exceed the token budget "
                        f"{res.token_budget}: without chunked prefill a preempted request is prefilled again "
                        "with its generated tokens in one iteration (vLLM requires max_num_batched_tokens >= "
                        "max_model_len); raise --token-budget, reserve KV blocks, or use --batching chunked",
                        field="token_budget")
    disagg = res.scenario.disaggregation
    engines_per = res.instance.engines_per_replica
    cfg, cost = engine_config(res, "decode" if disagg else "both")
    pre_cfg = engine_config(res, "prefill")[0] if disagg else None
    out = simulate(requests, cost=cost, config=cfg, engines=res.ctx.decode_replicas * engines_per,
                   router=sched.router, prefill_config=pre_cfg, prefill_engines=res.ctx.prefill_replicas * engines_per,
                   kv_transfer_s=(lambda tokens: kv_transfer_seconds(res, tokens)) if disagg else None,
                   trace=trace, progress=progress)
    finish = np.asarray(out.table.finish)
    if (finish < 0).any():
        raise RuntimeError(f"{int((finish < 0).sum())} requests never finished (simulator bug)")
    if requests.concurrency is not None:  # a closed loop sent each request when an earlier one finished
        requests = replace(requests, arrival_s=np.asarray(out.table.arrival, float))
    return res, requests, out


@dataclass(frozen=True)
class _Latencies:
    """Per request, milliseconds: time to first token, per output token (requests of more than
    one token) and end to end; which met every objective; the span of the run, seconds."""

    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    ok: np.ndarray
    span: float
    decode: np.ndarray  # ms from first token to finish, every request

    def itl_mean(self, outputs: np.ndarray, mask: np.ndarray | None = None) -> float:
        """Token-weighted mean inter-token latency of the requests in ``mask`` (default all)."""
        d, o = (self.decode, outputs) if mask is None else (self.decode[mask], outputs[mask])
        gaps = float((o - 1).clip(min=0).sum())
        return float(d.sum()) / gaps if gaps else 0.0


def request_latencies(sc: ServeScenario, requests: Requests, out: SimulationOutput) -> tuple[np.ndarray, ...]:
    """Each request's TTFT, TPOT (requests of more than one output token) and end-to-end
    latency, ms: the distributions the percentiles summarise."""
    lat = _latencies(sc, requests, out)
    return lat.ttft, lat.tpot, lat.e2e


def _latencies(sc: ServeScenario, requests: Requests, out: SimulationOutput) -> _Latencies:
    arrival = requests.arrival_s
    first, finish = np.asarray(out.table.first), np.asarray(out.table.finish)
    outputs = requests.output_tokens.astype(float)
    ttft = (first - arrival) * 1e3
    multi = outputs > 1
    tpot = (finish[multi] - first[multi]) / (outputs[multi] - 1) * 1e3
    ok = np.ones(len(requests), bool)
    if sc.slo.ttft_ms is not None:
        ok &= ttft <= sc.slo.ttft_ms
    if sc.slo.tpot_ms is not None:
        tpot_all = np.zeros(len(requests))
        tpot_all[multi] = tpot
        ok &= tpot_all <= sc.slo.tpot_ms
    span = max(float(finish.max()) - float(arrival.min()), 1e-12)
    return _Latencies(ttft, tpot, (finish - arrival) * 1e3, ok, span, (finish - first) * 1e3)


def _stages(sc: ServeScenario, requests: Requests, lat: _Latencies) -> list[StageLatency]:
    if requests.stage is None:
        return []
    multi = requests.output_tokens > 1
    stage_of_multi = requests.stage[multi]
    out = []
    for i, stage in enumerate(sc.workload.stages):
        mine = requests.stage == i
        out.append(StageLatency(
            stage=i, rate=stage.rate, requests=int(mine.sum()),
            output_tokens_mean=float(requests.output_tokens[mine].mean()) if mine.any() else 0.0,
            ttft_ms=Percentiles.of(lat.ttft[mine]), tpot_ms=Percentiles.of(lat.tpot[stage_of_multi == i]),
            e2e_ms=Percentiles.of(lat.e2e[mine]), itl_mean_ms=lat.itl_mean(requests.output_tokens, mine)))
    return out


def _memory(res: Deployment) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """GiB per GPU by part, per memory tier, and each tier's capacity share."""
    inst = res.instance
    off = inst.offload
    kv_gb = (inst.kv_capacity_blocks * res.scenario.scheduler.block_size * inst.kv_bytes_per_token
             * inst.engines_per_replica / GiB)
    off_gpu_kv_gb = kv_gb * off.kv_host_share if off.kv_off_gpu else 0.0
    memory = {"weights": inst.weights_bytes_per_gpu / GiB, "activations": inst.activation_bytes_per_gpu / GiB,
              "kv_cache": kv_gb - off_gpu_kv_gb, "budget": inst.memory_budget_bytes / GiB}
    tiers = {"gpu": memory["weights"] + memory["activations"] + memory["kv_cache"],
             "host": off.host_weight_bytes / GiB + (off_gpu_kv_gb if off.kv_tier == "host" else 0.0),
             "nvme": off.nvme_weight_bytes / GiB + (off_gpu_kv_gb if off.kv_tier == "nvme" else 0.0)}
    capacity = {"gpu": inst.memory_budget_bytes / GiB, "host": off.tiers.host_capacity / GiB,
                "nvme": off.tiers.nvme_capacity / GiB}
    return memory, tiers, capacity


def _assumptions(res: Deployment, longest_request: int) -> list[str]:
    sc, off = res.scenario, res.instance.offload
    dep, sched = sc.deployment, sc.scheduler
    assumptions = [
        f"batching {sched.batching}; KV allocation {'reserved' if engine_reserve(sc) else 'on demand'} in "
        f"{sched.block_size}-token blocks; preemption {sched.preemption}",
        f"{sched.gpu_memory_utilization:.0%} of GPU memory for weights, activations and KV cache",
        f"engine overhead per iteration {res.ctx.iteration_overhead_s * 1e3:g} ms; host launch overhead per layer "
        f"{res.profile.layer_overhead_s * 1e6:g} us (0 where kernels are issued ahead or replayed as CUDA graphs)",
        "embedding and output projection in 16 bits; decode attention at the profile's memory-bandwidth efficiency",
    ]
    if not res.profile.fitted:
        assumptions.append(f"profile {res.profile.name} is not fitted to measured runs of the {res.cluster.gpu.name}: "
                           f"{res.profile.provenance.split('. ')[0]}")
    if dep.precision == "fp4":
        assumptions.append("fp4 is NVFP4 (E2M1 with an E4M3 scale per 16 elements) for weights and activations; "
                           "its GEMMs run at the FP8 efficiency's fraction of the FP4 peak, a prior: no FP4 run "
                           "is fitted yet")
    context = res.model.context_note(longest_request, "the longest request (prompt and output)")
    if context:
        assumptions.append(context)
    if dep.pp > 1:
        assumptions.append(f"pipeline parallelism: each replica runs {dep.pp} batches in flight (vLLM virtual "
                           "engines), each with 1/pp of the KV cache")
    if sc.speculative is not None:
        s = sc.speculative
        assumptions.append(f"speculative decoding: draft {s.draft_model}, {s.num_tokens} tokens per step, acceptance "
                           f"{s.acceptance_rate}: {speculative_tokens_per_step(s.acceptance_rate, s.num_tokens):.2f}"
                           " tokens per step in expectation, for every sequence alike")
    assumptions.extend(off.description)
    if off.target_on_cpu:
        assumptions.append("target on the CPU: each step the GPU drafts, then the CPU verifies, in turn; the CPU "
                           f"uses stated priors ({res.instance.layout.dev.profile.provenance}); the draft's prompt "
                           "prefill is not charged")
    elif off.offloaded:
        assumptions.append("offloaded iterations: the next layer's weights are fetched while this layer computes; "
                           "the GPU and CPU overlap only across micro-batches (sextant.cost.streaming)")
    if sc.disaggregation is not None:
        assumptions.append(f"disaggregated: KV moves over the {sc.disaggregation.link.replace('_', '-')} link after "
                           "prefill; TTFT ends at the prefill instance")
    return assumptions


def _summed(engines: list, attribute: str) -> dict[str, float]:
    """Per key, the engines' ``attribute`` dicts added up (in engine order)."""
    total: dict[str, float] = {}
    for e in engines:
        for k, v in getattr(e, attribute).items():
            total[k] = total.get(k, 0.0) + v
    return total


def summarise(res: Deployment, requests: Requests, out: SimulationOutput) -> ServeResult:
    sc, ctx, inst = res.scenario, res.ctx, res.instance
    dep, sched = sc.deployment, sc.scheduler
    lat = _latencies(sc, requests, out)
    span = lat.span
    outputs = requests.output_tokens.astype(float)
    gpus = ctx.replicas * dep.gpus_per_replica
    engines = out.engines + out.prefill_engines
    parts, busy = _summed(engines, "parts"), _summed(engines, "resource_busy")
    memory, tiers, capacity = _memory(res)
    return ServeResult(
        model=res.model.name, gpu=res.cluster.gpu.name, gpus=gpus, tp=dep.tp, pp=dep.pp, ep=dep.ep,
        replicas=ctx.replicas, prefill_replicas=ctx.prefill_replicas,
        precision=dep.precision, kv_precision=dep.resolved_kv_precision, batching=sched.batching,
        max_batch=sched.max_batch, token_budget=res.token_budget, framework=sc.framework,
        num_requests=len(requests), offline=requests.offline, makespan_s=span,
        output_tokens_per_s=float(outputs.sum()) / span,
        output_tokens_per_s_per_gpu=float(outputs.sum()) / span / gpus,
        input_tokens_per_s=float(requests.input_tokens.sum()) / span,
        requests_per_s=len(requests) / span,
        model_tflops_per_gpu=2.0 * count_params(res.model).active * float(
            requests.input_tokens.sum() + outputs.sum()) / span / gpus / 1e12,
        ttft_ms=Percentiles.of(lat.ttft), tpot_ms=Percentiles.of(lat.tpot), e2e_ms=Percentiles.of(lat.e2e),
        itl_mean_ms=lat.itl_mean(requests.output_tokens),
        slo_attainment=float(lat.ok.mean()), goodput_requests_per_s=float(lat.ok.sum()) / span,
        kv_cache_peak_fraction=max(e.kv_peak_fraction() for e in engines),
        kv_cache_capacity_tokens=inst.kv_capacity_tokens,
        preemptions=out.table.preemptions, memory_gb_per_gpu=memory, memory_gb_per_tier=tiers,
        tier_capacity_gb=capacity, time_breakdown_s=parts, bottleneck=_gpu_seconds_label(parts),
        binding_resource=max(busy, key=busy.get) if inst.offload.offloaded else "gpu",
        resource_busy_s=busy, iterations=sum(e.iterations for e in engines),
        profile=res.profile.name, profile_fitted=res.profile.fitted,
        assumptions=_assumptions(res, int((requests.input_tokens + requests.output_tokens).max())),
        stages=_stages(sc, requests, lat), workload=sc.workload.model_dump(mode="json"),
    )


def engine_reserve(sc: ServeScenario) -> bool:
    """KV reserved at admission: asked for, or implied by static batches and speculation."""
    return (sc.scheduler.kv_allocation == "reserve" or sc.scheduler.batching == "static"
            or sc.speculative is not None)


def predict_serve(scenario: ServeScenario, requests: Requests | None = None, *,
                  progress: Callable[[int, int], None] | None = None) -> ServeResult:
    res, reqs, out = run(scenario, requests, progress=progress)
    return summarise(res, reqs, out)
