"""A serving scenario: which model, on which GPUs, laid out and scheduled how, under what traffic.

Vocabulary as vLLM, TensorRT-LLM and the serving papers use it: ``tp``/``pp``/``ep`` per model
replica, ``replicas`` behind a router, continuous batching with ``max_batch`` running sequences
(vLLM's ``max_num_seqs``) and a ``token_budget`` of tokens per iteration
(``max_num_batched_tokens``; Sarathi-Serve's chunk budget), paged KV blocks of ``block_size``
tokens, TTFT/TPOT service-level objectives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sextant.spec.base import Spec
from sextant.spec.model import ModelSpec
from sextant.spec.scenario import HardwareRef, read_tree, validate_tree

Batching = Literal["static", "continuous", "chunked"]
WeightPrecision = Literal["bf16", "fp16", "fp8", "int8", "w4a16"]
KVPrecision = Literal["bf16", "fp16", "fp8", "int8", "int4"]
Router = Literal["round_robin", "least_loaded"]
Preemption = Literal["recompute", "swap"]
KVAllocation = Literal["on_demand", "reserve"]
Arrival = Literal["poisson", "gamma"]
LengthDistribution = Literal["fixed", "uniform", "exponential", "lognormal"]


class Deployment(Spec):
    """How one replica of the model is split over GPUs, and how many replicas serve."""

    tp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    ep: int = Field(default=1, gt=0, description="Expert parallelism inside the tp group (MoE).")
    replicas: int | None = Field(default=None, gt=0, description="Default: GPUs / (tp * pp).")
    precision: WeightPrecision = "bf16"
    kv_precision: KVPrecision | None = Field(
        default=None, description="Default: fp8 with fp8 weights (TensorRT-LLM's default), else 16-bit.")
    #: How decode attention reads a grouped-query KV cache: ``grouped`` reads each KV head once
    #: for all the query heads that share it (TensorRT-LLM's XQA kernel, FlashInfer, FlashDecoding);
    #: ``per_head`` lets every query head read its KV head itself (TensorRT-LLM's masked MHA kernel
    #: before XQA, as in v0.6), multiplying the cache traffic by the group size.
    decode_attention: Literal["grouped", "per_head"] = "grouped"

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
        return "fp8" if self.precision == "fp8" else ("bf16" if self.precision == "bf16" else "fp16")


class Scheduler(Spec):
    """Batching policy of every engine (vLLM / TensorRT-LLM / Sarathi-Serve)."""

    batching: Batching = "continuous"
    max_batch: int = Field(default=256, gt=0, description="Sequences running at once (max_num_seqs).")
    token_budget: int | None = Field(
        default=None, gt=0,
        description="Tokens per iteration (max_num_batched_tokens). Default: 8192 when chunked, "
                    "else max(8192, longest prompt).")
    block_size: int = Field(default=16, gt=0, description="Tokens per paged KV block.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1,
                                          description="Fraction of GPU memory the engine may use.")
    kv_allocation: KVAllocation = Field(
        default="on_demand",
        description="on_demand: blocks as sequences grow, preempting when full (vLLM); reserve: "
                    "prompt + output reserved at admission, never preempts (TensorRT-LLM "
                    "GUARANTEED_NO_EVICT, static batching).")
    preemption: Preemption = "recompute"
    swap_space_gb: float = Field(default=4.0, ge=0, description="Host memory per GPU for swapped KV (vLLM default).")
    router: Router = "least_loaded"
    iteration_overhead_ms: float | None = Field(
        default=None, ge=0, description="Engine work per iteration (scheduling, sampling); default: the framework's.")


class Speculative(Spec):
    """Speculative decoding with a draft model (Leviathan et al. 2023; Chen et al. 2023)."""

    draft_model: str
    num_tokens: int = Field(default=4, gt=0, le=16, description="Tokens the draft proposes per step (gamma).")
    acceptance_rate: float = Field(default=0.7, gt=0, lt=1, description="Per-token acceptance probability alpha.")


class Disaggregation(Spec):
    """Prefill and decode on separate instances with KV transfer (Splitwise, DistServe)."""

    prefill_replicas: int = Field(gt=0)
    decode_replicas: int = Field(gt=0)
    link: Literal["intra_node", "network"] = Field(
        default="network", description="What carries the KV cache from prefill to decode instances.")


class LengthSpec(Spec):
    """A token-length distribution: ``mean`` (and ``stdev`` / bounds where the shape needs them)."""

    distribution: LengthDistribution = "fixed"
    mean: float = Field(gt=0)
    stdev: float = Field(default=0.0, ge=0)
    min: int = Field(default=1, gt=0)
    max: int | None = Field(default=None, gt=0)


class ServeWorkload(Spec):
    """Requests: fixed or distributed lengths with synthetic arrivals, or a trace file.

    Without ``rate`` every request arrives at time 0 (offline: maximum throughput, as MLPerf
    Offline and trtllm-bench measure)."""

    input_len: int | LengthSpec = 512
    output_len: int | LengthSpec = 256
    trace: str | None = Field(default=None, description="CSV or JSONL with arrival_s, input_tokens, output_tokens.")
    rate: float | None = Field(default=None, gt=0, description="Mean arrivals per second.")
    arrival: Arrival = "poisson"
    burstiness: float = Field(default=1.0, gt=0, description="Gamma arrivals: shape k (1 = Poisson; < 1 burstier).")
    num_requests: int = Field(default=1000, gt=0)
    seed: int = 0


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


def parse_serve_scenario(data: dict[str, Any], source: str = "scenario", *, from_flags: bool = False) -> ServeScenario:
    return validate_tree(ServeScenario, data, source, from_flags=from_flags)


def load_serve_scenario(path: str | Path) -> ServeScenario:
    return parse_serve_scenario(read_tree(path, "model, hardware, deployment, scheduler, workload"), source=str(path))
