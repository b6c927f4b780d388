"""``plan serve --rate``: the fewest GPUs, and the cheapest, that serve live traffic within its
latency objectives, on each GPU type asked about.

For each GPU type and each tensor-parallel degree whose replica holds the model, the capacity of
one replica is the highest Poisson arrival rate at which the chosen percentile of TTFT and TPOT
stays within the objectives (and the queue stays bounded): found by bisection between 0 and the
replica's offline throughput, each probe a ``predict serve`` simulation of the same requests at
that rate (Mélange, Griggs et al. 2024, profiles each GPU type's capacity under an SLO the same
way, from measurements). ``ceil(rate / capacity)`` replicas of the cheapest degree serve the
traffic; the chosen deployment is simulated once more whole, its replicas behind the router at
the full rate, and reported with the latency that simulation gives. With a price per GPU-hour
(``--price GPU=DOLLARS``, else the catalog's dated on-demand list price, catalog/data/prices.yaml)
the plan ranks by dollars per hour and reports dollars per million output tokens; a type with
neither is ranked by GPUs.

With a price for every GPU type, the cheapest *mix* of types is found too (Mélange's integer
program: minimise the fleet's dollars per hour with its summed capacity at least the rate, solved
exactly by a bounded search), the traffic split in proportion to capacity and each part
simulated at its share.

With several weight precisions (``precisions``, e.g. bf16 and fp8), each GPU type's cheapest
(precision, degree) is kept; a precision the GPU cannot run is rejected with its reason.
Where no replica within a node serves (a model too large for one node, or too slow there),
whole nodes of tensor parallelism are pipelined in 2, 4 or 8 stages. Not yet searched:
disaggregation, attention data parallelism.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import BaseModel

from sextant.errors import SextantError, SpecError
from sextant.resolve.hardware import cluster_and_profile, list_price, model_of
from sextant.serve.predict import ServeResult, predict_serve
from sextant.spec.scenario import HardwareRef
from sextant.spec.serving import ServeScenario

#: Bisection steps on the per-replica rate: capacity to 1/2^7 of the offline throughput.
BISECTION_STEPS = 7
#: Requests per capacity probe (each a simulation at one rate).
PROBE_REQUESTS = 600


class CapacityEntry(BaseModel):
    gpu: str
    tp: int
    #: Pipeline stages per replica: more than 1 only where no replica within a node serves.
    pp: int = 1
    precision: str = "bf16"  # the weights' (the cheapest of those searched)
    capacity_rps: float  # per replica, within the objectives
    replicas: int
    gpus: int
    dollars_per_hour: float | None
    dollars_per_million_output_tokens: float | None
    ttft_ms: float  # the percentile, whole deployment at the full rate
    tpot_ms: float
    meets_slo: bool


class MixPart(BaseModel):
    gpu: str
    tp: int
    pp: int = 1
    precision: str = "bf16"
    replicas: int
    rate: float  # the share of the traffic routed to this type (in proportion to capacity)
    ttft_ms: float
    tpot_ms: float
    meets_slo: bool


class CapacityMix(BaseModel):
    """The cheapest fleet of several GPU types: replicas of each type's best degree, traffic split
    in proportion to their capacity (Mélange's integer program, solved exactly here)."""

    parts: list[MixPart]
    dollars_per_hour: float
    saves_over_cheapest_single: float  # fraction of the cheapest one-type deployment's cost


class CapacityPlan(BaseModel):
    model: str
    rate: float
    percentile: float
    ttft_slo_ms: float | None
    tpot_slo_ms: float | None
    framework: str | None
    entries: list[CapacityEntry]  # the cheapest degree of each GPU type, best first
    layouts: dict[str, dict[int, float]]  # GPU -> tp -> per-replica capacity (requests/s)
    simulations: int
    rejected: dict[str, str]  # GPU/tp -> why it cannot serve
    #: With a price for every GPU type that can serve: the cheapest mix, when it beats one type.
    mix: CapacityMix | None = None
    #: Dollars per GPU-hour used for each priced type, and where each came from (``--price``, or
    #: the catalog's dated list price, catalog/data/prices.yaml).
    prices: dict[str, float] = {}
    price_sources: dict[str, str] = {}


def cheapest_mix(rate: float, capacity: dict[str, float], cost: dict[str, float]) -> tuple[dict[str, int], float]:
    """Replicas per type minimising total cost with total capacity at least ``rate``: an exact
    search over the covering integer program (each type at most ceil(rate / capacity) replicas)."""
    types = sorted(capacity, key=lambda t: cost[t] / capacity[t])
    best: tuple[float, dict[str, int]] = (math.inf, {})

    def search(i: int, left: float, spent: float, chosen: dict[str, int]) -> None:
        nonlocal best
        if left <= 1e-9:
            if spent < best[0]:
                best = (spent, dict(chosen))
            return
        if i == len(types) or spent + left * cost[types[i]] / capacity[types[i]] >= best[0]:
            return  # the cheapest rate per dollar left cannot beat the best found
        t = types[i]
        most = math.ceil(left / capacity[t] - 1e-9)
        for n in range(most, -1, -1):
            chosen[t] = n
            search(i + 1, left - n * capacity[t], spent + n * cost[t], chosen)
        chosen.pop(t, None)

    search(0, rate, 0.0, {})
    return {t: n for t, n in best[1].items() if n}, best[0]


def _percentile(r: ServeResult, q: float) -> tuple[float, float]:
    pick = {0.5: "p50", 0.9: "p90", 0.99: "p99"}[q]
    return getattr(r.ttft_ms, pick), getattr(r.tpot_ms, pick)


def _meets(base: ServeScenario, r: ServeResult, q: float) -> bool:
    ttft, tpot = _percentile(r, q)
    slo = base.slo
    return ((slo.ttft_ms is None or ttft <= slo.ttft_ms) and (slo.tpot_ms is None or tpot <= slo.tpot_ms))


def _with(base: ServeScenario, gpu: str, tp: int, replicas: int, rate: float | None, requests: int,  # noqa: PLR0913
          pp: int = 1) -> ServeScenario:
    """The base scenario on ``replicas`` replicas of ``tp`` GPUs of type ``gpu``, with ``requests``
    requests at ``rate`` (None: all at time 0)."""
    # Only what the scenario set: a field dumped at its default would count as set and keep the
    # serving preset from filling it (CUDA graphs, chunked batching, the KV sizing of its engine).
    tree = base.model_dump(exclude_unset=True)
    tree["hardware"] = {"gpu": gpu, "gpus": tp * pp * replicas}  # the GPU's usual node
    tree["deployment"] = {**tree.get("deployment", {}), "tp": tp, "pp": pp, "replicas": replicas}
    workload = {k: v for k, v in tree.get("workload", {}).items() if k not in ("rate", "stages", "concurrency")}
    workload["num_requests"] = requests
    if rate is not None:
        workload["rate"] = rate
    tree["workload"] = workload
    return ServeScenario.model_validate(tree)


def chosen_scenario(base: ServeScenario, plan: CapacityPlan) -> ServeScenario:
    """``base`` as the cheapest deployment of ``plan`` serves it: its GPU type, degree and
    replicas, at the planned rate."""
    if not plan.entries:
        raise SpecError("no GPU type serves this traffic within the objectives: nothing to export", field="emit")
    best = plan.entries[0]
    return _with(_at_precision(base, best.precision), best.gpu, best.tp, best.replicas, plan.rate,
                 base.workload.num_requests, best.pp)


def _degrees(gpu: str, base: ServeScenario) -> list[int]:
    """Tensor-parallel degrees to try: the scenario's, else 1, 2, 4, 8 within one node."""
    if "tp" in base.deployment.model_fields_set:
        return [base.deployment.tp]
    return [t for t in (1, 2, 4, 8) if t <= _node_gpus(gpu)]


def _node_gpus(gpu: str) -> int:
    cluster, _ = cluster_and_profile(HardwareRef(gpu=gpu, gpus=1))  # the GPU's usual node
    return cluster.node.gpus_per_node


def _stages(base: ServeScenario) -> list[int]:
    """Pipeline stages to try when no replica within a node serves: the scenario's, else 2, 4 and
    8 (those that divide the layers), each stage a whole node of tensor parallelism."""
    if "pp" in base.deployment.model_fields_set:
        return [base.deployment.pp] if base.deployment.pp > 1 else []
    layers = model_of(base.model).num_layers
    return [p for p in (2, 4, 8) if layers % p == 0]


class _Search:
    def __init__(self, q: float, progress: Callable[[int], None] | None) -> None:
        self.q, self.progress, self.simulations = q, progress, 0

    def simulate(self, sc: ServeScenario) -> ServeResult:
        self.simulations += 1
        if self.progress is not None:
            self.progress(self.simulations)
        return predict_serve(sc)

    def capacity(self, base: ServeScenario, gpu: str, tp: int, pp: int = 1) -> float:
        """Highest per-replica Poisson rate within the objectives (0 if even a trickle misses)."""
        offline = self.simulate(_with(base, gpu, tp, 1, None, PROBE_REQUESTS, pp))
        lo, hi = 0.0, offline.requests_per_s
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            if _meets(base, self.simulate(_with(base, gpu, tp, 1, mid, PROBE_REQUESTS, pp)), self.q):
                lo = mid
            else:
                hi = mid
        return lo


def plan_capacity(base: ServeScenario, rate: float, gpus: list[str], *, percentile: float = 0.99,  # noqa: PLR0913
                  prices: dict[str, float] | None = None, precisions: list[str] | None = None,
                  progress: Callable[[int], None] | None = None) -> CapacityPlan:
    if base.slo.ttft_ms is None and base.slo.tpot_ms is None:
        raise SpecError("a live-traffic plan needs an objective: --ttft-slo and/or --tpot-slo", field="slo")
    if percentile not in (0.5, 0.9, 0.99):
        raise SpecError(f"--slo-percentile must be 50, 90 or 99 (got {percentile * 100:g})", field="slo_percentile")
    for name in prices or {}:
        if name not in gpus:
            raise SpecError(f"a price for {name}, which is not among --gpu {','.join(gpus)}", field="price")
    prices, price_sources = _prices(gpus, prices or {})
    search = _Search(percentile, progress)
    variants = {p: _at_precision(base, p) for p in (precisions or [base.deployment.precision])}
    layouts: dict[str, dict[int, float]] = {}
    rejected: dict[str, str] = {}
    entries: list[CapacityEntry] = []
    for gpu in gpus:
        best: tuple[int, str, int, int, float] | None = None  # (GPUs, precision, tp, pp, capacity)
        for precision, variant in variants.items():
            name = gpu if len(variants) == 1 else f"{gpu} {precision}"
            found = _capacities(search, variant, gpu, name, layouts, rejected)
            for (tp, pp), cap in found.items():
                # One GPU type's price: the fewest GPUs cost least; a tie keeps the precision listed first.
                need = tp * pp * math.ceil(rate / cap)
                if best is None or need < best[0]:
                    best = (need, precision, tp, pp, cap)
        if best is None:
            continue
        _, precision, tp, pp, cap = best
        entries.append(_entry(search, variants[precision], gpu, precision, (tp, pp), cap, rate, prices.get(gpu)))
    entries.sort(key=lambda e: (not e.meets_slo, e.dollars_per_hour if e.dollars_per_hour is not None else math.inf,
                                e.gpus))
    mix = _mix(variants, rate, entries, prices, search) if len(entries) > 1 else None
    return CapacityPlan(model=str(base.model), rate=rate, percentile=percentile, ttft_slo_ms=base.slo.ttft_ms,
                        tpot_slo_ms=base.slo.tpot_ms, framework=base.framework, entries=entries, layouts=layouts,
                        simulations=search.simulations, rejected=rejected, mix=mix, prices=prices,
                        price_sources=price_sources)


def _capacities(search: _Search, base: ServeScenario, gpu: str, name: str, layouts: dict, rejected: dict) -> dict:
    """Each replica layout's capacity, (tp, pp) -> requests/s: the degrees within a node, and only
    when none of them serves, whole nodes pipelined (recorded under ``"{name} pp{pp}"``)."""
    found: dict[tuple[int, int], float] = {}
    layouts[name] = {}
    for tp in _degrees(gpu, base):
        if not _probe(search, base, gpu, name, tp, 1, layouts[name], rejected, found):
            return found  # the GPU cannot run these weights at any degree
    if found:
        return found
    tp = max(_degrees(gpu, base))
    for pp in _stages(base):
        layouts[f"{name} pp{pp}"] = {}
        _probe(search, base, gpu, f"{name} pp{pp}", tp, pp, layouts[f"{name} pp{pp}"], rejected, found)
    return found


def _probe(search: _Search, base: ServeScenario, gpu: str, name: str, tp: int, pp: int,  # noqa: PLR0913
           layout: dict, rejected: dict, found: dict) -> bool:
    """Measure one layout's capacity into ``layout`` and ``found``, or record why it cannot serve;
    False when the GPU cannot run the scenario's precision at all."""
    try:
        cap = search.capacity(base, gpu, tp, pp)
    except SextantError as err:
        if err.field == "precision":
            rejected[name] = str(err).splitlines()[0]
            return False
        rejected[f"{name} tp{tp}"] = str(err).splitlines()[0]
        return True
    if cap <= 0:
        rejected[f"{name} tp{tp}"] = "misses the objectives even at a trickle"
    else:
        layout[tp] = found[(tp, pp)] = cap
    return True


def _entry(search: _Search, base: ServeScenario, gpu: str, precision: str, degrees: tuple[int, int],  # noqa: PLR0913
           capacity: float, rate: float, price: float | None) -> CapacityEntry:
    """The deployment of ``ceil(rate / capacity)`` replicas, simulated whole at the full rate."""
    tp, pp = degrees
    replicas = math.ceil(rate / capacity)
    whole = search.simulate(_with(base, gpu, tp, replicas, rate, max(PROBE_REQUESTS, int(20 * rate)), pp))
    ttft, tpot = _percentile(whole, search.q)
    per_hour = None if price is None else price * tp * pp * replicas
    per_million = None if per_hour is None else per_hour / (whole.output_tokens_per_s * 3600 / 1e6)
    return CapacityEntry(gpu=gpu, tp=tp, pp=pp, precision=precision, capacity_rps=capacity, replicas=replicas,
                         gpus=tp * pp * replicas, dollars_per_hour=per_hour,
                         dollars_per_million_output_tokens=per_million, ttft_ms=ttft, tpot_ms=tpot,
                         meets_slo=_meets(base, whole, search.q))


def _at_precision(base: ServeScenario, precision: str) -> ServeScenario:
    """``base`` with weights of ``precision`` (the KV cache follows them unless the scenario sets it)."""
    if precision == base.deployment.precision:
        return base
    tree = base.model_dump(exclude_unset=True)
    tree["deployment"] = {**tree.get("deployment", {}), "precision": precision}
    return ServeScenario.model_validate(tree)


def _prices(gpus: list[str], given: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """Dollars per GPU-hour of each type: the user's, else the catalog's list price (with where
    each came from); a type with neither stays unpriced."""
    prices, sources = {}, {}
    for gpu in gpus:
        if gpu in given:
            prices[gpu], sources[gpu] = given[gpu], "--price"
        elif (listed := list_price(gpu)) is not None:
            prices[gpu], sources[gpu] = listed.dollars_per_gpu_hour, f"catalog: {listed.label}"
    return prices, sources


def _mix(variants: dict[str, ServeScenario], rate: float, entries: list[CapacityEntry], prices: dict[str, float],
         search: _Search) -> CapacityMix | None:
    """The cheapest fleet over the GPU types' best degrees, each part simulated at its share."""
    if any(e.gpu not in prices for e in entries):
        return None
    capacity = {e.gpu: e.capacity_rps for e in entries}
    cost = {e.gpu: prices[e.gpu] * e.tp * e.pp for e in entries}
    counts, dollars = cheapest_mix(rate, capacity, cost)
    single = min(e.dollars_per_hour for e in entries if e.meets_slo) if any(e.meets_slo for e in entries) else math.inf
    if len(counts) < 2 or dollars >= single:
        return None
    total = sum(n * capacity[g] for g, n in counts.items())
    parts = []
    for e in entries:
        n = counts.get(e.gpu, 0)
        if not n:
            continue
        share = rate * n * capacity[e.gpu] / total
        base = variants[e.precision]
        r = search.simulate(_with(base, e.gpu, e.tp, n, share, max(PROBE_REQUESTS, int(20 * share)), e.pp))
        ttft, tpot = _percentile(r, search.q)
        parts.append(MixPart(gpu=e.gpu, tp=e.tp, pp=e.pp, precision=e.precision, replicas=n, rate=share, ttft_ms=ttft,
                             tpot_ms=tpot, meets_slo=_meets(base, r, search.q)))
    return CapacityMix(parts=parts, dollars_per_hour=dollars, saves_over_cheapest_single=1 - dollars / single)
