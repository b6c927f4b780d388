"""A serving scenario: which model, on which GPUs, laid out and scheduled how, under what traffic.

Vocabulary as vLLM, TensorRT-LLM and the serving papers use it: ``tp``/``pp``/``ep`` per model
replica, ``replicas`` behind a router, continuous batching with ``max_batch`` running sequences
(vLLM's ``max_num_seqs``) and a ``token_budget`` of tokens per iteration
(``max_num_batched_tokens``; Sarathi-Serve's chunk budget), paged KV blocks of ``block_size``
tokens, TTFT/TPOT service-level objectives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from sextant.spec.base import Spec
from sextant.spec.limits import (
    MAX_ITERATION_OVERHEAD_MS,
    MAX_MEMORY_GIB,
    MAX_SEQUENCE_TOKENS,
    MAX_SERVING_GPUS,
)
from sextant.spec.model import ModelSpec
from sextant.spec.scenario import HardwareRef, read_tree, validate_tree

Batching = Literal["static", "continuous", "chunked"]
WeightPrecision = Literal["bf16", "fp16", "fp8", "int8", "w4a16", "fp4"]
KVPrecision = Literal["bf16", "fp16", "fp8", "int8", "int4"]
Router = Literal["round_robin", "least_loaded"]
Preemption = Literal["recompute", "swap"]
KVAllocation = Literal["on_demand", "reserve"]
KVSizing = Literal["profiled", "static_fraction"]
Arrival = Literal["poisson", "gamma", "constant"]
WeightHome = Literal["none", "cpu", "nvme"]
Streamed = Literal["all", "experts"]
KVHome = Literal["gpu", "cpu", "nvme"]
AttentionDevice = Literal["cpu", "gpu"]
ExpertPopularity = Literal["uniform", "zipf"]
LengthDistribution = Literal["fixed", "uniform", "exponential", "lognormal"]


class Deployment(Spec):
    """How one replica of the model is split over GPUs, and how many replicas serve."""

    tp: int = Field(default=1, gt=0, le=MAX_SERVING_GPUS)
    pp: int = Field(default=1, gt=0, le=MAX_SERVING_GPUS)
    ep: int = Field(default=1, gt=0, le=MAX_SERVING_GPUS, description="Expert parallelism inside the tp group (MoE).")
    replicas: int | None = Field(default=None, gt=0, le=MAX_SERVING_GPUS, description="Default: GPUs / (tp * pp).")
    precision: WeightPrecision = "bf16"
    kv_precision: KVPrecision | None = Field(
        default=None, description="Default: fp8 with fp8 or fp4 weights (TensorRT-LLM's default), else 16-bit.")
    #: How decode attention reads a grouped-query KV cache: ``grouped`` reads each KV head once
    #: for all the query heads that share it (TensorRT-LLM's XQA kernel, FlashInfer, FlashDecoding);
    #: ``per_head`` lets every query head read its KV head itself (TensorRT-LLM's masked MHA kernel
    #: before XQA, as in v0.6), multiplying the cache traffic by the group size.
    decode_attention: Literal["grouped", "per_head"] = "grouped"
    #: W4A16 quantization groups: weights per fp16 scale (AWQ and GPTQ use 128; ZeRO-Inference 64),
    #: and whether each group also stores an fp16 zero point (asymmetric quantization).
    weight_group_size: int = Field(default=128, gt=0, le=MAX_SEQUENCE_TOKENS)
    weight_zero_point: bool = False

    @model_validator(mode="after")
    def _check(self) -> Deployment:
        if self.tp % self.ep:
            raise ValueError(f"ep={self.ep} must divide tp={self.tp} (experts are spread inside the tp group)")
        return self

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def resolved_kv_precision(self) -> str:
        if self.kv_precision is not None:
            return self.kv_precision
        return "fp8" if self.precision in ("fp8", "fp4") else ("bf16" if self.precision == "bf16" else "fp16")


class ServeOffload(Spec):
    """Weights and KV cache kept below the GPU while serving, streamed in per layer.

    ``weights``: where the weights that are not resident live: ``cpu`` (host DRAM) or ``nvme``
    (read through host bounce buffers); each iteration streams them over the host link, layer by
    layer, the next layer's fetch overlapping this layer's compute (ZeRO-Inference, Aminabadi et
    al. 2022; FlexGen, Sheng et al. 2023). ``streamed``: ``all`` the decoder's weights, or only the
    routed ``experts`` of a mixture-of-experts model, whose dense parts then stay on the GPU
    (Mixtral-offloading, HybriMoE, MoE-Lens). ``resident_fraction``: the share of the streamed set
    kept on the GPU instead: whole layers for ``all`` (FlexGen's weight percentages), a cache of
    each layer's most popular experts for ``experts``. ``kv_cache: cpu`` keeps the KV cache in host
    memory and runs decode attention on the CPU beside the GPU's GEMMs (FlexGen's CPU attention,
    ZeRO-Inference's KV offload, MoE-Lens); ``micro_batches`` splits each iteration so that the
    CPU's attention for one part overlaps the GPU's work on another (FlexGen's GPU batches).

    FlexGen's three-tier placement (Sheng et al. ICML 2023, section 4.2): ``nvme_fraction`` puts
    that share of the weights on NVMe and the rest of the streamed set in host DRAM (its wd, with
    ``resident_fraction`` its wg); ``kv_cache: nvme`` keeps the cache on the drives, read back
    every decode iteration; ``kv_attention: gpu`` runs decode attention on the GPU even with the
    cache off it, copying the cache in each iteration (FlexGen turns its CPU "computation
    delegation" off when it compresses the cache).
    """

    weights: WeightHome = "none"
    streamed: Streamed = "all"
    resident_fraction: float = Field(default=0.0, ge=0, lt=1)
    nvme_fraction: float = Field(
        default=0.0, ge=0, le=1,
        description="With weights: cpu, the share of all weights on NVMe instead of host DRAM (FlexGen's wd).")
    kv_cache: KVHome = "gpu"
    kv_attention: AttentionDevice = Field(
        default="cpu", description="Where decode attention runs when the KV cache is off the GPU.")
    micro_batches: int = Field(default=1, gt=0, le=1 << 16)
    pinned: bool = Field(default=True, description="Host copies of the weights in pinned memory (else pageable).")
    expert_popularity: ExpertPopularity = Field(
        default="uniform", description="Routing distribution over each layer's experts, when no routing trace.")
    zipf_exponent: float = Field(default=1.0, gt=0)
    routing_trace: str | None = Field(
        default=None, description="CSV of routed expert ids (columns layer, expert), one row per token choice.")

    @model_validator(mode="after")
    def _check_placement(self) -> ServeOffload:
        if self.nvme_fraction > 0 and self.weights != "cpu":
            raise ValueError("nvme_fraction splits weights: cpu between host DRAM and NVMe; "
                             "for every streamed weight on NVMe use weights: nvme")
        if self.nvme_fraction > 0 and self.streamed != "all":
            raise ValueError("nvme_fraction applies to streamed: all (whole layers)")
        if self.resident_fraction + self.nvme_fraction > 1:
            raise ValueError(f"resident_fraction {self.resident_fraction} and nvme_fraction {self.nvme_fraction} "
                             "add up to more than all the weights")
        if self.kv_attention == "gpu" and self.kv_cache == "gpu":
            raise ValueError("kv_attention chooses where attention runs when the KV cache is off the GPU; "
                             "set kv_cache: cpu or nvme")
        return self

    @property
    def active(self) -> bool:
        return self.weights != "none" or self.kv_cache != "gpu"


class Scheduler(Spec):
    """Batching policy of every engine (vLLM / TensorRT-LLM / Sarathi-Serve)."""

    batching: Batching = "continuous"
    max_batch: int = Field(default=256, gt=0, le=1 << 20, description="Sequences running at once (max_num_seqs).")
    token_budget: int | None = Field(
        default=None, gt=0, le=MAX_SEQUENCE_TOKENS,
        description="Tokens per iteration (max_num_batched_tokens). Default: 8192 when chunked; "
                    "max(8192, longest prompt + output) for continuous batching, whose preempted "
                    "requests are prefilled again whole (a smaller one is refused when KV blocks are "
                    "allocated on demand); max(8192, longest prompt) for static batches.")
    block_size: int = Field(default=16, gt=0, le=1 << 16, description="Tokens per paged KV block.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1,
                                          description="Fraction of GPU memory the engine may use.")
    kv_allocation: KVAllocation = Field(
        default="on_demand",
        description="on_demand: blocks as sequences grow, preempting when full (vLLM); reserve: "
                    "prompt + output reserved at admission, never preempts (TensorRT-LLM "
                    "GUARANTEED_NO_EVICT, static batching).")
    preemption: Preemption = "recompute"
    swap_space_gb: float = Field(default=4.0, ge=0, le=MAX_MEMORY_GIB, description="Host memory per GPU for swapped KV (vLLM default).")
    router: Router = "least_loaded"
    iteration_overhead_ms: float | None = Field(
        default=None, ge=0, le=MAX_ITERATION_OVERHEAD_MS, description="Engine work per iteration (scheduling, sampling); default: the framework's.")
    cuda_graphs: bool = Field(
        default=False,
        description="Iterations of up to cuda_graph_max_tokens tokens replay captured CUDA graphs (vLLM V1, SGLang, "
                    "TensorRT-LLM): no launch per kernel; decode-only iterations replay the whole step, mixed ones "
                    "all but attention (vLLM's FULL_AND_PIECEWISE). Batches are padded to a captured size.")
    cuda_graph_max_tokens: int | None = Field(
        default=None, gt=0, le=MAX_SEQUENCE_TOKENS,
        description="Largest captured batch in tokens; default vLLM's min(2 x max_batch, 512).")
    async_scheduling: bool = Field(
        default=False,
        description="The scheduler chooses iteration N + 1's batch while iteration N runs (vLLM V1's async "
                    "scheduling, default from v0.12; SGLang's overlap scheduler): a request arriving during N "
                    "waits for N + 2.")
    prefix_caching: bool = Field(
        default=False,
        description="Reuse the KV blocks of a shared prompt prefix (vLLM's automatic prefix caching, on by "
                    "default in V1; SGLang's RadixAttention): only full blocks are reused.")
    kv_sizing: KVSizing = Field(
        default="profiled",
        description="How the engine sizes its KV cache (serve/deploy.py kv_cache_budget): profiled (vLLM: "
                    "gpu_memory_utilization x capacity less the weights, a profiling run's peak and the memory "
                    "outside PyTorch) or static_fraction (SGLang: mem_fraction_static x the memory free at start, "
                    "less the weights; activations and CUDA graphs live in the rest).")
    sampler_profile_bytes: float = Field(
        default=4.0, ge=0, le=64,
        description="Bytes per logit (max_batch x vocab) the profiling run's sampler holds at its peak: the fp32 "
                    "logits (vLLM V0); vLLM V1 runs dummy logits through top-k/top-p and logprobs.")
    runtime_gib: float = Field(
        default=0.0, ge=0, le=MAX_MEMORY_GIB,
        description="GiB the engine's process holds outside PyTorch before it sizes the cache: CUDA context, "
                    "cuBLAS workspaces (vLLM's non_torch_memory on one GPU).")
    collective_runtime_gib: float = Field(
        default=0.0, ge=0, le=MAX_MEMORY_GIB,
        description="GiB more outside PyTorch with tensor parallelism: NCCL communicators, custom all-reduce "
                    "buffers.")


class Speculative(Spec):
    """Speculative decoding with a draft model (Leviathan et al. 2023; Chen et al. 2023)."""

    draft_model: str
    num_tokens: int = Field(default=4, gt=0, le=16, description="Tokens the draft proposes per step (gamma).")
    acceptance_rate: float = Field(default=0.7, gt=0, lt=1, description="Per-token acceptance probability alpha.")
    #: Where the target model runs: on the GPUs beside the draft, or on the host CPU from host
    #: memory while the draft proposes on the GPU (Dovetail, Zhang et al. EMNLP 2025,
    #: arXiv:2412.18934), which keeps only the draft in GPU memory.
    target_device: Literal["gpu", "cpu"] = "gpu"


class Disaggregation(Spec):
    """Prefill and decode on separate instances with KV transfer (Splitwise, DistServe)."""

    prefill_replicas: int = Field(gt=0, le=MAX_SERVING_GPUS)
    decode_replicas: int = Field(gt=0, le=MAX_SERVING_GPUS)
    link: Literal["intra_node", "network"] = Field(
        default="network", description="What carries the KV cache from prefill to decode instances.")


#: A fixed length in tokens, 1 to MAX_SEQUENCE_TOKENS.
TokenCount = Annotated[int, Field(gt=0, le=MAX_SEQUENCE_TOKENS)]


class LengthSpec(Spec):
    """A token-length distribution: ``mean`` (and ``stdev`` / bounds where the shape needs them)."""

    distribution: LengthDistribution = "fixed"
    mean: float = Field(gt=0, le=MAX_SEQUENCE_TOKENS)
    stdev: float = Field(default=0.0, ge=0, le=MAX_SEQUENCE_TOKENS)
    min: int = Field(default=1, gt=0, le=MAX_SEQUENCE_TOKENS)
    max: int | None = Field(default=None, gt=0, le=MAX_SEQUENCE_TOKENS)


#: Arrival rates a simulation accepts (requests per second): one request a day at the least (a
#: slower rate is a typo, and rates near zero overflow the arrival times), a billion at the most.
MIN_RATE = 1.0 / 86_400
MAX_RATE = 1e9


class LoadStage(Spec):
    """One stage of a load test: ``rate`` requests per second for ``duration_s`` seconds
    (inference-perf's ``load.stages``, GuideLLM's constant-rate sweeps)."""

    rate: float = Field(ge=MIN_RATE, le=MAX_RATE, description="Arrivals per second in this stage.")
    duration_s: float = Field(gt=0, le=1e9, description="Seconds the stage sends requests for.")


class SharedPrefix(Spec):
    """Prompts that open with a shared prefix: each request's prompt starts with one of
    ``groups`` distinct prefixes of ``tokens`` tokens (a system prompt shared by the users of an
    application; SGLang's generated-shared-prefix benchmark). The prefix is part of
    ``input_len``. An engine with prefix caching computes it once per group and reuses its KV
    blocks (serve/engine.py).

    ``prompts_per_group``: each group has that many distinct whole prompts, which the requests
    send in turn, so a prompt seen before is cached whole (inference-perf's ``shared_prefix``
    data: ``num_groups`` x ``num_prompts_per_group`` prompts, request i sends prompt i modulo
    their number, in a shuffled order). None: every request's text after the prefix is new, and
    requests pick their group at random."""

    tokens: int = Field(gt=0, le=10_000_000, description="Tokens of the shared prefix, counted in input_len.")
    groups: int = Field(default=1, gt=0, le=1_000_000, description="Distinct prefixes.")
    prompts_per_group: int | None = Field(
        default=None, gt=0, le=1_000_000,
        description="Distinct whole prompts per group, sent in turn (None: every prompt new).")


class ServeWorkload(Spec):
    """Requests: fixed or distributed lengths with synthetic arrivals, or a trace file.

    Without ``rate`` or ``stages`` every request arrives at time 0 (offline: maximum throughput,
    as MLPerf Offline and trtllm-bench measure). With ``stages`` the load runs each stage in turn,
    ``rate x duration_s`` requests apiece, and latency is also reported per stage."""

    input_len: TokenCount | LengthSpec = 512
    output_len: TokenCount | LengthSpec = 256
    trace: str | None = Field(default=None, description="CSV or JSONL with arrival_s, input_tokens, output_tokens.")
    rate: float | None = Field(default=None, ge=MIN_RATE, le=MAX_RATE, description="Mean arrivals per second.")
    stages: list[LoadStage] = Field(
        default=[], max_length=1000,
        description="Load stages run in turn (rate, duration_s); replaces rate and num_requests.")
    arrival: Arrival = Field(
        default="poisson", description="poisson, gamma (with burstiness) or constant (evenly spaced, 1/rate apart).")
    burstiness: float = Field(default=1.0, ge=0.01, le=100.0,
                              description="Gamma arrivals: shape k (1 = Poisson; < 1 burstier).")
    num_requests: int = Field(default=1000, gt=0)
    concurrency: int | None = Field(
        default=None, gt=0, le=10_000_000,
        description="Closed loop: this many clients, each sending its next request when its last one finishes "
                    "(vllm bench serve --max-concurrency, AIPerf/genai-perf concurrency mode).")
    shared_prefix: SharedPrefix | None = None
    seed: int = Field(default=0, ge=0, lt=2**63, description="Random seed of the synthetic requests.")

    @model_validator(mode="after")
    def _check_load(self) -> ServeWorkload:
        if self.stages:
            if self.rate is not None:
                raise ValueError("give either rate or stages, not both (each stage has its own rate)")
            if "num_requests" in self.model_fields_set:
                raise ValueError("stages set the number of requests (rate x duration_s of each); drop num_requests")
            if self.trace is not None:
                raise ValueError("a trace carries its own arrival times; stages apply to synthetic requests")
        ignored = sorted({"input_len", "output_len", "rate", "arrival", "burstiness", "shared_prefix"}
                         & self.model_fields_set) if self.trace is not None else []
        if ignored:
            raise ValueError(f"a trace gives each request's arrival time and lengths; {', '.join(ignored)} would be "
                             "ignored: drop " + ("it" if len(ignored) == 1 else "them") + " or the trace")
        if self.concurrency is not None and (self.rate is not None or self.stages or self.trace is not None):
            raise ValueError("concurrency keeps that many requests in flight (a closed loop); it replaces rate, "
                             "stages and trace arrival times")
        if self.shared_prefix is not None:
            shortest = self.input_len if isinstance(self.input_len, int) else self.input_len.min
            if self.shared_prefix.tokens >= shortest:
                raise ValueError(f"the shared prefix ({self.shared_prefix.tokens} tokens) must be shorter than "
                                 f"every prompt (input_len at least {shortest})")
        return self

    @property
    def stage_requests(self) -> list[int]:
        """Requests each stage sends: rate x duration, rounded."""
        return [max(int(round(s.rate * s.duration_s)), 1) for s in self.stages]


class SLO(Spec):
    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)


class ServeScenario(Spec):
    """``model`` is a catalog name, a path to a HuggingFace config.json, or an inline spec."""

    model: str | ModelSpec = "llama-3.1-8b"
    #: Serving framework preset (catalog/data/serving_frameworks.yaml): scheduler defaults and
    #: its per-iteration overhead.
    framework: str | None = None
    hardware: HardwareRef = HardwareRef(gpu="h100-sxm", gpus=1)
    deployment: Deployment = Deployment()
    scheduler: Scheduler = Scheduler()
    workload: ServeWorkload = ServeWorkload()
    slo: SLO = SLO()
    speculative: Speculative | None = None
    disaggregation: Disaggregation | None = None
    offload: ServeOffload = ServeOffload()



def default_gpus(tree: dict[str, Any]) -> None:
    """Fill ``hardware.gpus``, when the tree leaves it out, with what its replicas need (tp x pp
    GPUs each), so that ``tp: 2`` alone asks for two GPUs rather than one too few."""
    if "gpus" in tree.get("hardware", {}):
        return
    dep, disagg = tree.get("deployment", {}), tree.get("disaggregation")
    try:
        count = (disagg["prefill_replicas"] + disagg["decode_replicas"] if isinstance(disagg, dict)
                 else dep.get("replicas") or 1)
        gpus = int(dep.get("tp", 1)) * int(dep.get("pp", 1)) * int(count)
    except (AttributeError, KeyError, TypeError, ValueError):
        return  # a malformed tree: validation names the key
    if gpus > 0:
        tree.setdefault("hardware", {})["gpus"] = gpus


def parse_serve_scenario(data: dict[str, Any], source: str = "scenario", *, from_flags: bool = False) -> ServeScenario:
    return validate_tree(ServeScenario, data, source, from_flags=from_flags)


def load_serve_scenario(path: str | Path) -> ServeScenario:
    return parse_serve_scenario(read_tree(path, "model, hardware, deployment, scheduler, workload"), source=str(path))
