"""``plan serve``: search where a replica keeps a model's weights and KV cache, how large a batch
it runs, and, on several GPUs, how they split into tensor-parallel replicas, for the highest
offline throughput.

The space is FlexGen's policy space (Sheng et al., ICML 2023, section 4.3: the GPU batch size,
the number of GPU batches in a block, and the percentages of weights and KV cache on GPU, CPU and
disk, with attention on the CPU or the GPU), reduced to a grid:

- weights: all on the GPU; streamed from host DRAM with 0, 25, 50 or 75% kept resident; split
  between DRAM and NVMe (25, 50 or 75% on the drives); all on NVMe;
- for a mixture-of-experts model also only its routed experts, in DRAM or on NVMe, with 0, 25,
  50 or 75% of each layer's experts (the most popular) cached on the GPU and the dense parts
  resident (Mixtral-offloading, Eliseev & Mazur 2023; HybriMoE; MoE-Lens): the routing
  distribution or trace of the scenario decides how many experts a batch touches;
- KV cache: on the GPU; in host DRAM or on NVMe with decode attention on the CPU or the GPU;
- the batch: powers of two up to the number of requests, each split into 1, 2, 4 or 8 GPU
  batches when anything is offloaded.

FlexGen relaxes the placement to a linear program over its own cost model; here the grid's best
placement is refined instead: its share (resident layers, cached experts, or on NVMe) is searched
again in 5% steps (whole experts) between its grid neighbours. Every candidate is simulated by the
same ``predict serve`` that scores one configuration, so a plan and a prediction of its best entry
agree exactly. A batch ladder stops at the first batch that does not
fit: memory only grows with the batch.

On ``N`` GPUs every tensor-parallel degree that divides ``N``, fits in one node and divides the
attention heads is searched, with ``N / tp`` replicas (``N / (tp pp)`` with stages) sharing the
node's host memory, link and drives (``sextant.cost.tiers`` divides them over the GPUs in use):
more replicas run more batches at once, a wider tp holds more KV cache per replica and streams a
smaller shard per GPU, at the price of its all-reduces. Pipeline stages are searched too, for replicas that hold the whole
model on their GPUs (offloaded serving streams each GPU's tensor-parallel shard, with pp 1):
``tp x pp`` GPUs per replica, ``pp`` dividing the layers, each replica running ``pp`` batches in
flight (vLLM's virtual engines), so its batch is per virtual engine. Where GPUs share only PCIe,
stages trade tensor parallelism's two all-reduces per layer for one activation send per stage.
Requests are dealt out evenly, so each candidate's engines run the same timeline and the
simulator replays one (``sextant.serve.simulator``). A degree given explicitly (``--tp``,
``--pp``, or ``deployment.tp``/``pp`` in the scenario) is kept.

A time-per-output-token objective (``--tpot-slo``, ``slo.tpot_ms``) bounds the batch: a
candidate any of whose requests decodes slower than the objective is rejected, and its ladder
stops there (a larger batch only slows each step), so the plan is the highest throughput whose
every token arrives within the bound: the throughput-latency trade-off of offline serving. (With
every request at time 0, time to first token is mostly queueing, so it is not an objective here.)

Not searched: precision (an input), pipeline stages of offloaded replicas, and activations off
the GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from sextant.errors import InfeasibleError, SpecError
from sextant.plan.space import divisors
from sextant.resolve.hardware import cluster_and_profile, model_of
from sextant.resolve.layout import check_serving
from sextant.serve.predict import ServeResult, predict_serve
from sextant.spec.hardware import ClusterSpec
from sextant.spec.serving import ServeScenario, parse_serve_scenario

RESIDENT_FRACTIONS = (0.0, 0.25, 0.5, 0.75)
NVME_FRACTIONS = (0.25, 0.5, 0.75)
MICRO_BATCHES = (1, 2, 4, 8)
#: Offload settings a plan keeps from the scenario: how host copies are made and how tokens route.
KEPT_OFFLOAD = ("pinned", "expert_popularity", "zipf_exponent", "routing_trace")
#: A doubling of the batch (or of the GPU batches per block) that gains less than this is flat.
PLATEAU = 0.01
#: After the grid, the best placement's share (resident, cached experts or on NVMe) is searched
#: again at this step between its grid neighbours: FlexGen's placement is continuous.
REFINE_STEP = 0.05
#: Spacing of the grid's shares, which the refinement fills in.
GRID_STEP = 0.25


class ServePolicy(BaseModel):
    """One placement of weights and KV cache (the strategy), with the batch that runs it."""

    weights: str  # none (all on the GPU), cpu or nvme
    streamed: str = "all"  # all the weights, or only a mixture-of-experts model's routed experts
    resident_fraction: float  # of the streamed set: whole layers, or each layer's cached experts
    nvme_fraction: float
    kv_cache: str
    kv_attention: str
    max_batch: int  # per engine: per replica, or per virtual engine of a pipelined replica
    micro_batches: int
    tp: int = 1
    replicas: int = 1
    pp: int = 1

    def offload(self) -> dict[str, Any]:
        """The scenario's ``offload`` settings for this placement (none when all is on the GPU)."""
        if self.weights == "none" and self.kv_cache == "gpu":
            return {}
        settings: dict[str, Any] = {"weights": self.weights, **({"streamed": "experts"} if self.experts else {}),
                                    "resident_fraction": self.resident_fraction,
                                    "nvme_fraction": self.nvme_fraction, "kv_cache": self.kv_cache,
                                    "micro_batches": self.micro_batches}
        if self.kv_cache != "gpu":
            settings["kv_attention"] = self.kv_attention
        return settings

    @property
    def experts(self) -> bool:
        return self.streamed == "experts"

    @property
    def weights_home(self) -> str:
        if self.weights == "none":
            return "GPU"
        if self.experts:
            return (f"experts in {'NVMe' if self.weights == 'nvme' else 'DRAM'}"
                    + (f", {self.resident_fraction:.0%} cached on GPU" if self.resident_fraction else ""))
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
    def gpus(self) -> int:
        return self.tp * self.pp * self.replicas

    @property
    def engines(self) -> int:
        """Engines the batch is dealt to: every replica's virtual engines (one per stage)."""
        return self.replicas * self.pp

    @property
    def offloaded(self) -> bool:
        return self.weights != "none" or self.kv_cache != "gpu"

    @property
    def layout(self) -> str:
        return replicas_label(self.tp, self.pp, self.replicas)

    @property
    def strategy(self) -> str:
        place = f"weights {self.weights_home}; KV {self.kv_home}"
        return place if self.gpus == 1 else f"{self.layout}: {place}"


def replicas_label(tp: int, pp: int, replicas: int) -> str:
    """``tp2 x 4`` (four replicas of two GPUs each), ``tp4 pp2 x 1``."""
    return f"tp{tp}{f' pp{pp}' if pp > 1 else ''} x {replicas}"


class ServePlanEntry(BaseModel):
    policy: ServePolicy
    strategy: str
    output_tokens_per_s: float
    #: The slowest request's time per output token (p99), ms: what a larger batch costs latency.
    tpot_ms: float
    binding_resource: str
    memory_gb_per_tier: dict[str, float]
    bottleneck: str


class ServePlan(BaseModel):
    model: str
    gpu: str
    node: str
    #: The time-per-output-token objective every planned request meets, ms (None: unbounded).
    tpot_slo_ms: float | None = None
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


def _placements(has_nvme: bool, moe: bool) -> Iterator[tuple[str, str, float, float]]:
    """(weights home, what is streamed, resident fraction, NVMe fraction) of every placement."""
    homes = ("cpu", "nvme") if has_nvme else ("cpu",)
    yield "none", "all", 0.0, 0.0
    for r in RESIDENT_FRACTIONS:
        yield "cpu", "all", r, 0.0
    if has_nvme:
        for d in NVME_FRACTIONS:
            yield "cpu", "all", 0.0, d
        yield "nvme", "all", 0.0, 0.0
    if moe:
        for home in homes:
            for r in RESIDENT_FRACTIONS:
                yield home, "experts", r, 0.0


def _kv_homes(has_nvme: bool) -> Iterator[tuple[str, str]]:
    yield "gpu", "cpu"
    for home in ("cpu", "nvme") if has_nvme else ("cpu",):
        for attention in ("cpu", "gpu"):
            yield home, attention


def _finer(p: ServePolicy, experts: int) -> list[ServePolicy]:
    """The best grid placement's neighbours between its grid points: its resident share in steps
    of REFINE_STEP (of whole layers, or of each layer's experts, at least one expert), or its
    share on NVMe (all on NVMe becomes a DRAM/NVMe split)."""
    if p.weights == "none":
        return []
    if p.experts:
        field, value, step = "resident_fraction", p.resident_fraction, max(1, round(experts * REFINE_STEP)) / experts
    elif p.weights == "nvme" or p.nvme_fraction:
        field, value, step = "nvme_fraction", p.nvme_fraction if p.weights == "cpu" else 1.0, REFINE_STEP
    else:
        field, value, step = "resident_fraction", p.resident_fraction, REFINE_STEP
    top = 1.0 - step if field == "resident_fraction" else 1.0 - REFINE_STEP
    shares = [value + sign * k * step for sign in (-1, 1) for k in range(1, int(GRID_STEP / step + 1e-9) + 1)]
    return [p.model_copy(update={"weights": "cpu" if field == "nvme_fraction" else p.weights, field: round(v, 6)})
            for v in sorted(shares) if step / 2 <= v <= top + 1e-9 and abs(v - value) < GRID_STEP - 1e-9]


def _batches(num_requests: int) -> list[int]:
    sizes, b = [], 1
    while b < num_requests:
        sizes.append(b)
        b *= 2
    return sizes + [num_requests]


def _scenario(tree: dict[str, Any], p: ServePolicy, num_requests: int) -> ServeScenario:
    """The scenario of one candidate: ``num_requests`` over all of its replicas."""
    tree = {**tree, "scheduler": {**tree.get("scheduler", {}), "max_batch": p.max_batch},
            "workload": {**tree.get("workload", {}), "num_requests": num_requests},
            "deployment": {**tree.get("deployment", {}), "tp": p.tp, "pp": p.pp, "replicas": p.replicas},
            "hardware": {**tree.get("hardware", {}), "gpus": p.gpus}}
    tree["offload"] = {**{k: v for k, v in tree.get("offload", {}).items() if k in KEPT_OFFLOAD}, **p.offload()}
    return parse_serve_scenario(tree, "plan serve candidate")


def chosen_scenario(base: ServeScenario, p: ServePolicy) -> ServeScenario:
    """``base`` with a plan's placement ``p`` (as ``predict serve`` or ``sextant export`` take it)."""
    return _scenario(base.model_dump(exclude_unset=True), p, base.workload.num_requests)


def _entry(p: ServePolicy, r: ServeResult) -> ServePlanEntry:
    return ServePlanEntry(policy=p, strategy=p.strategy, output_tokens_per_s=r.output_tokens_per_s,
                          tpot_ms=r.tpot_ms.p99, binding_resource=r.binding_resource, memory_gb_per_tier=r.memory_gb_per_tier,
                          bottleneck=r.bottleneck)


def _flat(ladder: list[ServePlanEntry]) -> bool:
    """Two doublings of the batch in a row gained less than :data:`PLATEAU` each: the GPU (or a
    link) is saturated and larger batches only add memory and latency."""
    if len(ladder) < 3:
        return False
    a, b, c = (e.output_tokens_per_s for e in ladder[-3:])
    return b <= a * (1 + PLATEAU) and c <= b * (1 + PLATEAU)


class _Search:
    """The candidates of one search: every placement's batch ladders, scored on one batch each."""

    def __init__(self, tree: dict[str, Any], num_requests: int, longest: int) -> None:
        self.tree, self.num_requests, self.longest = tree, num_requests, longest
        self.rejected: Counter[str] = Counter()
        self.entries: list[ServePlanEntry] = []
        self.evaluated = 0
        #: Per ladder with the KV cache in DRAM, the first batch that did not fit (None: all did).
        self.dram_limit: dict[tuple, int | None] = {}

    def placement(self, template: ServePolicy) -> None:
        """The batch ladders of one placement, over more GPU batches while they pay."""
        best_of_split = 0.0
        for m in MICRO_BATCHES if template.offloaded else (1,):
            policy = template.model_copy(update={"micro_batches": m})
            ladder = self.ladder(policy)
            self.entries += ladder
            top_of_split = max((e.output_tokens_per_s for e in ladder), default=0.0)
            if m > 1 and top_of_split <= best_of_split * (1 + PLATEAU):
                break  # more GPU batches per block no longer pay
            best_of_split = max(best_of_split, top_of_split)

    def ladder(self, policy: ServePolicy) -> list[ServePlanEntry]:
        """Batches of one placement and split, smallest first, until one does not fit or two
        doublings gain nothing. A KV cache on NVMe is tried only at batches whose cache DRAM could
        not hold: it adds drive reads and writes to the same link traffic, so where DRAM holds the
        cache the DRAM ladder is at least as fast."""
        key = (policy.tp, policy.pp, policy.weights, policy.streamed, policy.resident_fraction, policy.nvme_fraction,
               policy.kv_attention, policy.micro_batches)
        first = 1
        if policy.kv_cache == "nvme" and key in self.dram_limit:
            limit = self.dram_limit[key]
            if limit is None:
                return []
            first = limit
        entries: list[ServePlanEntry] = []
        limit = None
        for b in _batches(self.num_requests // policy.engines):
            if b < first or b % policy.micro_batches:
                continue
            candidate = policy.model_copy(update={"max_batch": b})
            self.evaluated += 1
            try:
                result = predict_serve(_scenario(self.tree, candidate, b * policy.engines))
            except InfeasibleError as err:
                self.rejected[err.resource] += 1
                limit = b
                break  # a larger batch needs more memory still
            if result.kv_cache_capacity_tokens < b * self.longest:
                self.rejected["KV cache"] += 1
                limit = b
                break
            if result.slo_attainment < 1.0:
                self.rejected["TPOT objective"] += 1
                break  # a larger batch only slows every decode step
            entries.append(_entry(candidate, result))
            if _flat(entries):
                break
        if policy.kv_cache == "cpu":
            self.dram_limit[key] = limit
        return entries


def _check(base: ServeScenario) -> None:
    if base.workload.rate is not None or base.workload.trace is not None:
        raise SpecError("plan serve searches offline throughput (every request at time 0): drop --rate and --trace",
                        field="workload")
    if base.speculative or base.disaggregation:
        raise SpecError("plan serve searches replicas without speculation or disaggregation",
                        field="speculative" if base.speculative else "disaggregation")
    if base.slo.ttft_ms is not None:
        raise SpecError("plan serve puts every request at time 0, so time to first token is mostly queueing: "
                        "bound the time per output token instead (--tpot-slo)", field="slo")
    if not (isinstance(base.workload.input_len, int) and isinstance(base.workload.output_len, int)):
        raise SpecError("plan serve needs fixed input and output lengths (a batch's KV cache is sized by them)",
                        field="workload")


def parallel_layouts(base: ServeScenario, cluster: ClusterSpec) -> list[tuple[int, int]]:
    """The (tp, pp) degrees of the replicas a plan searches: those the scenario sets, else every
    tp that divides the GPU count, fits in one node and divides the attention heads, with every
    pp that divides the remaining GPUs and the layers; each engine (a replica's pipeline stage
    running its own batch; GPUs / tp of them, whatever the stages) needs a request. When a degree
    is set and nothing fits, the first reason is the error."""
    dep, gpus, requests = base.deployment, base.hardware.gpus, base.workload.num_requests
    model = model_of(base.model)
    fixed = {k: getattr(dep, k) for k in ("tp", "pp") if k in dep.model_fields_set}
    layouts: list[tuple[int, int]] = []
    reasons: list[SpecError] = []
    for tp in [fixed["tp"]] if "tp" in fixed else divisors(gpus):
        for pp in [fixed["pp"]] if "pp" in fixed else divisors(gpus // tp):
            try:
                if gpus % (tp * pp):
                    raise SpecError(f"tp={tp} x pp={pp} does not divide the {gpus} GPUs into replicas", field="tp")
                if gpus // tp > requests:
                    raise SpecError(f"{gpus // tp} engines (replicas, or pipeline stages of them) of tp={tp} for "
                                    f"{requests} requests: each needs a request; raise --num-requests or --tp",
                                    field="num_requests")
                check_serving(model, tp, pp, dep.ep, cluster)
            except SpecError as err:
                reasons.append(err)
                continue
            layouts.append((tp, pp))
    if not layouts:
        if fixed and reasons:
            raise reasons[0]
        raise SpecError(f"no tensor-parallel degree splits {gpus} GPUs into replicas of {model.name} within "
                        f"one {cluster.node.name} with a request for each engine ({requests} requests)", field="gpus")
    return layouts


def _no_placement(base: ServeScenario, layouts: list[tuple[int, int]], rejected: Counter) -> InfeasibleError:
    reasons = ", ".join(f"{k}: {v}" for k, v in rejected.most_common())
    gpus = base.hardware.gpus
    shapes = ", ".join(replicas_label(tp, pp, gpus // (tp * pp)) for tp, pp in layouts)
    where = f"one {base.hardware.gpu}" if gpus == 1 else f"{gpus} x {base.hardware.gpu} as {shapes}"
    staged = " (pipelined replicas are not offloaded: drop --pp)" if all(pp > 1 for _, pp in layouts) else ""
    objective = f" and decodes within {base.slo.tpot_ms:g} ms per token" if base.slo.tpot_ms is not None else ""
    return InfeasibleError(f"no placement of {base.model} fits {where} with this node's host memory "
                           f"and drives{objective}, even at batch 1 ({reasons}); quantize the weights or add "
                           f"GPUs{staged}",
                           field="plan", resource=rejected.most_common(1)[0][0] if rejected else "GPU memory")


def _search(search: _Search, ladders: list[ServePolicy], experts: int,
            progress: Callable[[int, int], None] | None) -> None:
    """Every ladder of the grid, then the best grid placement's finer shares."""
    for i, policy in enumerate(ladders):
        search.placement(policy)
        if progress is not None:
            progress(i + 1, len(ladders))
    if not search.entries:
        return
    best_of_grid = max(search.entries, key=lambda e: e.output_tokens_per_s).policy
    finer = _finer(best_of_grid.model_copy(update={"max_batch": 1, "micro_batches": 1}), experts)
    for j, policy in enumerate(finer):
        search.placement(policy)
        if progress is not None:
            progress(len(ladders) + j + 1, len(ladders) + len(finer))


def plan_serve(base: ServeScenario, *, top: int = 5,
               progress: Callable[[int, int], None] | None = None) -> ServePlan:
    """Search the placements and batches of ``base`` (its model, hardware, precision and
    workload) for the highest offline output-token throughput (see the module docstring)."""
    _check(base)
    # The node the candidates are simulated on (a profile file may bring its own device).
    cluster = cluster_and_profile(base.hardware)[0]
    moe = model_of(base.model).moe
    tree = base.model_dump(exclude_unset=True)
    has_nvme = cluster.node.nvme is not None
    layouts = parallel_layouts(base, cluster)
    gpus = base.hardware.gpus
    # Offloaded serving streams each GPU's tensor-parallel shard: pipelined replicas hold theirs.
    ladders = [ServePolicy(weights=w, streamed=s, resident_fraction=r, nvme_fraction=d, kv_cache=kv, kv_attention=att,
                           max_batch=1, micro_batches=1, tp=tp, pp=pp, replicas=gpus // (tp * pp))
               for tp, pp in layouts for (w, s, r, d) in _placements(has_nvme, moe is not None)
               for (kv, att) in _kv_homes(has_nvme) if pp == 1 or (w == "none" and kv == "gpu")]
    search = _Search(tree, base.workload.num_requests, base.workload.input_len + base.workload.output_len)
    _search(search, ladders, moe.num_experts if moe is not None else 0, progress)
    entries = search.entries
    if not entries:
        raise _no_placement(base, layouts, search.rejected)
    entries.sort(key=lambda e: e.output_tokens_per_s, reverse=True)
    best_per_strategy: dict[str, ServePlanEntry] = {}
    for entry in entries:
        best_per_strategy.setdefault(entry.strategy, entry)
    # The search scored one batch per candidate; what is reported is the whole workload, as
    # `predict serve` simulates it (a last, partial batch included).
    full = [(e.policy, predict_serve(_scenario(tree, e.policy, base.workload.num_requests)))
            for e in entries[:top]]
    # Later batches repeat the first, so they meet the TPOT objective too; kept honest regardless.
    full = [pr for pr in full if pr[1].slo_attainment >= 1.0] or full
    full.sort(key=lambda pr: pr[1].output_tokens_per_s, reverse=True)
    best_policy, best = full[0]
    return ServePlan(model=best.model, gpu=best.gpu, node=cluster.node.name, tpot_slo_ms=base.slo.tpot_ms,
                     configs_evaluated=search.evaluated, configs_feasible=len(entries), rejected=dict(search.rejected),
                     best=best, best_policy=best_policy, top=[_entry(p, r) for p, r in full],
                     strategies=list(best_per_strategy.values()))
