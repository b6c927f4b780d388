"""``plan serve``: search where one GPU keeps a model's weights and KV cache, and how large a batch
it runs, for the highest offline throughput.

The space is FlexGen's policy space (Sheng et al., ICML 2023, section 4.3: the GPU batch size,
the number of GPU batches in a block, and the percentages of weights and KV cache on GPU, CPU and
disk, with attention on the CPU or the GPU), reduced to a grid:

- weights: all on the GPU; streamed from host DRAM with 0, 25, 50 or 75% kept resident; split
  between DRAM and NVMe (25, 50 or 75% on the drives); all on NVMe;
- KV cache: on the GPU; in host DRAM or on NVMe with decode attention on the CPU or the GPU;
- the batch: powers of two up to the number of requests, each split into 1, 2, 4 or 8 GPU
  batches when anything is offloaded.

FlexGen relaxes the placement to a linear program over its own cost model; here every candidate
is simulated by the same ``predict serve`` that scores one configuration, so a plan and a
prediction of its best entry agree exactly. A batch ladder stops at the first batch that does not
fit: memory only grows with the batch.

Not searched: the tensor-parallel degree and precision (inputs), streaming only the routed experts
of a mixture-of-experts model, and activations off the GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from sextant.catalog.hardware import get_gpu, get_node
from sextant.errors import InfeasibleError, SpecError
from sextant.serve.predict import ServeResult, predict_serve
from sextant.spec.serving import ServeScenario, parse_serve_scenario

RESIDENT_FRACTIONS = (0.0, 0.25, 0.5, 0.75)
NVME_FRACTIONS = (0.25, 0.5, 0.75)
MICRO_BATCHES = (1, 2, 4, 8)
#: A doubling of the batch (or of the GPU batches per block) that gains less than this is flat.
PLATEAU = 0.01


class ServePolicy(BaseModel):
    """One placement of weights and KV cache (the strategy), with the batch that runs it."""

    weights: str  # none (all on the GPU), cpu or nvme
    resident_fraction: float
    nvme_fraction: float
    kv_cache: str
    kv_attention: str
    max_batch: int
    micro_batches: int

    def offload(self) -> dict[str, Any]:
        """The scenario's ``offload`` settings for this placement (none when all is on the GPU)."""
        if self.weights == "none" and self.kv_cache == "gpu":
            return {}
        settings: dict[str, Any] = {"weights": self.weights, "resident_fraction": self.resident_fraction,
                                    "nvme_fraction": self.nvme_fraction, "kv_cache": self.kv_cache,
                                    "micro_batches": self.micro_batches}
        if self.kv_cache != "gpu":
            settings["kv_attention"] = self.kv_attention
        return settings

    @property
    def weights_home(self) -> str:
        if self.weights == "none":
            return "GPU"
        if self.weights == "nvme":
            return "NVMe"
        if self.nvme_fraction:
            return f"{1 - self.nvme_fraction:.0%} DRAM, {self.nvme_fraction:.0%} NVMe"
        return "DRAM" + (f", {self.resident_fraction:.0%} on GPU" if self.resident_fraction else "")

    @property
    def kv_home(self) -> str:
        if self.kv_cache == "gpu":
            return "GPU"
        return f"{'DRAM' if self.kv_cache == 'cpu' else 'NVMe'}, attention on {self.kv_attention.upper()}"

    @property
    def strategy(self) -> str:
        return f"weights {self.weights_home}; KV {self.kv_home}"


class ServePlanEntry(BaseModel):
    policy: ServePolicy
    strategy: str
    output_tokens_per_s: float
    binding_resource: str
    memory_gb_per_tier: dict[str, float]
    bottleneck: str


class ServePlan(BaseModel):
    model: str
    gpu: str
    node: str
    configs_evaluated: int
    configs_feasible: int
    rejected: dict[str, int]
    best: ServeResult
    best_policy: ServePolicy
    #: The fastest configurations, best first.
    top: list[ServePlanEntry]
    #: The fastest batch of every strategy that runs at all, best first: what each placement
    #: achieves and what limits it.
    strategies: list[ServePlanEntry]


def _placements(has_nvme: bool) -> Iterator[tuple[str, float, float]]:
    yield "none", 0.0, 0.0
    for r in RESIDENT_FRACTIONS:
        yield "cpu", r, 0.0
    if has_nvme:
        for d in NVME_FRACTIONS:
            yield "cpu", 0.0, d
        yield "nvme", 0.0, 0.0


def _kv_homes(has_nvme: bool) -> Iterator[tuple[str, str]]:
    yield "gpu", "cpu"
    for home in ("cpu", "nvme") if has_nvme else ("cpu",):
        for attention in ("cpu", "gpu"):
            yield home, attention


def _batches(num_requests: int) -> list[int]:
    sizes, b = [], 1
    while b < num_requests:
        sizes.append(b)
        b *= 2
    return sizes + [num_requests]


def _scenario(tree: dict[str, Any], p: ServePolicy, num_requests: int) -> ServeScenario:
    tree = {**tree, "scheduler": {**tree.get("scheduler", {}), "max_batch": p.max_batch},
            "workload": {**tree.get("workload", {}), "num_requests": num_requests}}
    tree["offload"] = {**{k: v for k, v in tree.get("offload", {}).items() if k == "pinned"}, **p.offload()}
    return parse_serve_scenario(tree, "plan serve candidate")


def _entry(p: ServePolicy, r: ServeResult) -> ServePlanEntry:
    return ServePlanEntry(policy=p, strategy=p.strategy, output_tokens_per_s=r.output_tokens_per_s,
                          binding_resource=r.binding_resource, memory_gb_per_tier=r.memory_gb_per_tier,
                          bottleneck=r.bottleneck)


def _flat(ladder: list[ServePlanEntry]) -> bool:
    """Two doublings of the batch in a row gained less than :data:`PLATEAU` each: the GPU (or a
    link) is saturated and larger batches only add memory and latency."""
    if len(ladder) < 3:
        return False
    a, b, c = (e.output_tokens_per_s for e in ladder[-3:])
    return b <= a * (1 + PLATEAU) and c <= b * (1 + PLATEAU)


def _check(base: ServeScenario) -> None:
    if base.workload.rate is not None or base.workload.trace is not None:
        raise SpecError("plan serve searches offline throughput (every request at time 0): drop --rate and --trace",
                        field="workload")
    dep = base.deployment
    if dep.pp > 1 or base.hardware.gpus != dep.tp or base.speculative or base.disaggregation:
        raise SpecError("plan serve searches the placements of one replica without pipeline stages, speculation or "
                        "disaggregation: give --gpus equal to --tp", field="deployment")
    if not (isinstance(base.workload.input_len, int) and isinstance(base.workload.output_len, int)):
        raise SpecError("plan serve needs fixed input and output lengths (a batch's KV cache is sized by them)",
                        field="workload")


def plan_serve(base: ServeScenario, *, top: int = 5,
               progress: Callable[[int, int], None] | None = None) -> ServePlan:
    """Search the placements and batches of ``base`` (its model, hardware, precision and
    workload) for the highest offline output-token throughput (see the module docstring)."""
    _check(base)
    node = get_node(base.hardware.node or get_gpu(base.hardware.gpu).default_node)
    tree = base.model_dump(exclude_unset=True)
    has_nvme = node.nvme is not None
    longest = base.workload.input_len + base.workload.output_len
    ladders = [(w, r, d, kv, att) for (w, r, d) in _placements(has_nvme) for (kv, att) in _kv_homes(has_nvme)]
    batches = _batches(base.workload.num_requests)
    rejected: Counter[str] = Counter()
    entries: list[ServePlanEntry] = []  # scored on one batch each
    evaluated = 0
    for i, (w, r, d, kv, att) in enumerate(ladders):
        splits = MICRO_BATCHES if (w != "none" or kv != "gpu") else (1,)
        best_of_split = 0.0
        for m in splits:
            ladder: list[ServePlanEntry] = []
            for b in batches:
                if b % m:
                    continue
                policy = ServePolicy(weights=w, resident_fraction=r, nvme_fraction=d, kv_cache=kv,
                                     kv_attention=att, max_batch=b, micro_batches=m)
                evaluated += 1
                try:
                    result = predict_serve(_scenario(tree, policy, b))
                except InfeasibleError as err:
                    rejected[err.resource] += 1
                    break  # a larger batch needs more memory still
                if result.kv_cache_capacity_tokens < b * longest:
                    rejected["KV cache"] += 1
                    break
                ladder.append(_entry(policy, result))
                if _flat(ladder):
                    break
            entries += ladder
            top_of_split = max((e.output_tokens_per_s for e in ladder), default=0.0)
            if m > 1 and top_of_split <= best_of_split * (1 + PLATEAU):
                break  # more GPU batches per block no longer pay
            best_of_split = max(best_of_split, top_of_split)
        if progress is not None:
            progress(i + 1, len(ladders))
    if not entries:
        reasons = ", ".join(f"{k}: {v}" for k, v in rejected.most_common())
        raise InfeasibleError(f"no placement of {base.model} fits one {base.hardware.gpu} with this node's host memory "
                              f"and drives, even at batch 1 ({reasons}); quantize the weights or add GPUs",
                              field="plan", resource=rejected.most_common(1)[0][0] if rejected else "GPU memory")
    entries.sort(key=lambda e: e.output_tokens_per_s, reverse=True)
    best_per_strategy: dict[str, ServePlanEntry] = {}
    for entry in entries:
        best_per_strategy.setdefault(entry.strategy, entry)
    # The search scored one batch per candidate; what is reported is the whole workload, as
    # `predict serve` simulates it (a last, partial batch included).
    full = [(e.policy, predict_serve(_scenario(tree, e.policy, base.workload.num_requests)))
            for e in entries[:top]]
    full.sort(key=lambda pr: pr[1].output_tokens_per_s, reverse=True)
    best_policy, best = full[0]
    return ServePlan(model=best.model, gpu=best.gpu, node=node.name,
                     configs_evaluated=evaluated, configs_feasible=len(entries), rejected=dict(rejected),
                     best=best, best_policy=best_policy, top=[_entry(p, r) for p, r in full],
                     strategies=list(best_per_strategy.values()))

