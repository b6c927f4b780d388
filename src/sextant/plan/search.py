"""``plan train``: evaluate a whole space, keep what fits, rank by the objective, explain.

The scenario is resolved once per GPU count (``sextant.resolve``); the evaluation is
:func:`sextant.train.step.evaluate` on the table, in chunks (for the progress report and bounded
memory); the top configurations are then explained one by one (``sextant.train.predict.explain``:
the same evaluation with its full breakdown) from the same context and their own row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from sextant.errors import InfeasibleError, SpecError
from sextant.plan.space import SearchSpace, Space, enumerate_space, layout_count, restrict_to_framework
from sextant.resolve.hardware import list_price
from sextant.resolve.train import TrainContext, resolve_train
from sextant.spec.limits import MAX_SEARCH_LAYOUTS, MAX_SEARCH_LAYOUTS_PER_COUNT
from sextant.spec.scenario import TrainScenario
from sextant.spec.strategy import RECOMPUTE_NAMES
from sextant.train.candidates import Candidates
from sextant.train.predict import explain
from sextant.train.result import TIME_PART_LABELS, TrainResult
from sextant.train.step import StepEvaluation, evaluate
from sextant.units import GiB

Objective = Literal["throughput", "time-to-train", "cost", "energy"]
CHUNK = 250_000

Progress = Callable[[int, int], None]


class GpuCountSummary(BaseModel):
    gpus: int
    configs_evaluated: int
    configs_feasible: int
    best_tokens_per_s: float | None
    best_mfu: float | None
    days: float | None = None
    dollars: float | None = None
    energy_mwh: float | None = None
    on_pareto_front: bool = False


class OffloadOption(BaseModel):
    """The fastest configuration of one offload choice, and what binds it."""

    offload_optimizer: str
    offload_params: str
    offload_activations: str
    gpus: int
    tokens_per_s: float
    step_time_s: float
    mfu: float
    binding_resource: str
    memory_gb_per_tier: dict[str, float]
    config: str


class PlanResult(BaseModel):
    """JSON shape of ``plan train --json``."""

    model: str
    gpu: str
    objective: Objective
    gpus: list[int]
    global_batch: int
    seq_len: int
    configs_total: int
    configs_evaluated: int
    configs_feasible: int
    rejected: dict[str, int]
    search_seconds: float
    evaluations_per_second: float
    best: TrainResult
    top: list[TrainResult]
    why_best: list[str]
    by_gpu_count: list[GpuCountSummary]
    tokens: float | None = None
    price_per_gpu_hour: float | None = None
    #: Where the price came from: ``--price-per-gpu-hour``, or the catalog's dated list price.
    price_source: str | None = None
    days: float | None = None
    dollars: float | None = None
    assumptions: list[str] = Field(default_factory=list)
    #: With offloading searched: the best configuration of each offload choice that fits (none
    #: included), fastest first.
    offload_options: list[OffloadOption] = Field(default_factory=list)


def _score(objective: Objective, tokens_per_s: np.ndarray, gpus: int, tdp_w: float) -> np.ndarray:
    """Higher is better. Throughput and time-to-train rank alike at one GPU count; cost ranks by
    tokens per GPU-second (price is a constant factor); energy by tokens per joule at TDP."""
    if objective in ("throughput", "time-to-train"):
        return tokens_per_s
    if objective == "cost":
        return tokens_per_s / gpus
    return tokens_per_s / (gpus * tdp_w)


def tie_breaks(c: Candidates) -> tuple[np.ndarray, ...]:
    """Among configurations that score alike, the simpler first: fewer offloaded states, fewer
    model-parallel ranks, fewer virtual stages, a lower ZeRO stage, less recomputation (after
    less memory and fewer GPUs, see :func:`rank_rows` and :func:`plan_train`)."""
    return (c.offload_optimizer + c.offload_params + c.offload_activations, c.tp * c.pp * c.cp * c.ep, c.vpp,
            c.zero, c.recompute)


def _tied(score, best) -> np.ndarray:
    """Scores relative to the best, equal to 1e-9 counting as a tie."""
    return np.round(score / best, 9)


def rank_rows(score: np.ndarray, memory: np.ndarray, c: Candidates) -> np.ndarray:
    """Row indices of the feasible rows (finite score), best first: by score, then less memory,
    then :func:`tie_breaks`."""
    feasible = np.flatnonzero(np.isfinite(score))
    s = score[feasible]
    keys = (-_tied(s, s.max()), memory[feasible], *(k[feasible] for k in tie_breaks(c)))
    return feasible[np.lexsort(keys[::-1])]


def explain_difference(best: TrainResult, runner_up: TrainResult) -> list[str]:
    """Why the best beats the runner-up: the configuration differences and the breakdown parts
    whose time differs most."""
    keys = ("dp", "tp", "pp", "cp", "ep", "vpp", "zero", "micro_batch", "recompute", "sequence_parallel",
            "offload_optimizer", "offload_params", "offload_activations")
    diffs = [f"{k} {getattr(runner_up, k)} -> {getattr(best, k)}" for k in keys if getattr(best, k) != getattr(runner_up, k)]
    gain = runner_up.step_time_s / best.step_time_s - 1
    if gain < 1e-6:
        memory = runner_up.memory_gb_per_gpu["total"] - best.memory_gb_per_gpu["total"]
        lines = [f"best ties with the runner-up on step time ({', '.join(diffs)}); preferred for "
                 + (f"{memory:.1f} GiB less memory per GPU" if memory > 0.05 else "its simpler layout")]
    else:
        lines = [f"best is {gain:.1%} faster than the runner-up ({', '.join(diffs)})"]
    deltas = sorted(((runner_up.time_breakdown_s[k] - best.time_breakdown_s[k], k) for k in best.time_breakdown_s),
                    key=lambda d: abs(d[0]), reverse=True)
    for delta, key in deltas[:3]:
        if abs(delta) > 1e-3 * best.step_time_s:
            verb = "saves" if delta > 0 else "costs"
            lines.append(f"{verb} {abs(delta) * 1e3:.1f} ms per step in {TIME_PART_LABELS[key]}")
    return lines


def evaluate_table(ctx, cand: Candidates, progress: Progress | None) -> StepEvaluation | None:
    """Evaluate the table in chunks on a thread pool (NumPy releases the GIL inside its array
    operations, so the chunks run on all cores); results are concatenated in table order."""
    n = len(cand)
    if n == 0:
        return None
    workers = max(1, min(os.cpu_count() or 1, 8))
    size = max(20_000, min(CHUNK, -(-n // (2 * workers))))
    slices = [slice(start, min(n, start + size)) for start in range(0, n, size)]
    parts: list[StepEvaluation] = [None] * len(slices)  # type: ignore[list-item]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(evaluate, ctx, cand.take(np.arange(sl.start, sl.stop)), detail=False): i
                   for i, sl in enumerate(slices)}
        done = 0
        for future in as_completed(futures):
            i = futures[future]
            parts[i] = future.result()
            done += slices[i].stop - slices[i].start
            if progress:
                progress(done, n)
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    cat = np.concatenate
    return StepEvaluation(
        step_time_s=cat([p.step_time_s for p in parts]),
        time_parts_s={k: cat([p.time_parts_s[k] for p in parts]) for k in first.time_parts_s},
        memory_parts_bytes={k: cat([p.memory_parts_bytes[k] for p in parts]) for k in first.memory_parts_bytes},
        memory_bytes=cat([p.memory_bytes for p in parts]),
        required_bytes=cat([p.required_bytes for p in parts]),
        capacity_bytes=first.capacity_bytes,
        num_microbatches=cat([p.num_microbatches for p in parts]),
        model_flops_per_step=first.model_flops_per_step,
        hardware_flops_per_step=cat([p.hardware_flops_per_step for p in parts]),
        executed_flops_per_step=cat([p.executed_flops_per_step for p in parts]),
        peak_flops=first.peak_flops, num_gpus=first.num_gpus, tokens_per_step=first.tokens_per_step,
        host_bytes=cat([np.broadcast_to(p.host_bytes, p.step_time_s.shape) for p in parts]),
        nvme_bytes=cat([np.broadcast_to(p.nvme_bytes, p.step_time_s.shape) for p in parts]),
        host_capacity_bytes=min(p.host_capacity_bytes for p in parts),
        nvme_capacity_bytes=min(p.nvme_capacity_bytes for p in parts),
    )


def score_space(ev: StepEvaluation, objective: Objective, gpus: int, tdp_w: float, headroom: float,
                bound_ratio: float = 1.0):
    """(fits, score) per row: score is -inf where the row's peak times ``bound_ratio`` does not
    fit with the headroom."""
    fits = (ev.required_bytes * bound_ratio <= ev.capacity_bytes * (1.0 - headroom)) & ev.tiers_fit
    return fits, np.where(fits, _score(objective, ev.tokens_per_s, gpus, tdp_w), -np.inf)


def with_gpus(scenario: TrainScenario, gpus: int) -> TrainScenario:
    """The scenario on ``gpus`` GPUs of the same kind."""
    return scenario.model_copy(update={"hardware": scenario.hardware.model_copy(update={"gpus": gpus})})


def chosen_scenario(scenario: TrainScenario, row: TrainResult) -> TrainScenario:
    """``scenario`` with the configuration of a plan's ``row`` (its GPUs and strategy), as
    ``predict train`` or ``sextant export`` take it."""
    strategy = scenario.strategy.model_dump(exclude_unset=True)
    strategy.update({k: getattr(row, k) for k in ("dp", "tp", "pp", "cp", "ep", "etp", "vpp", "zero", "micro_batch",
                                                  "recompute", "sequence_parallel", "schedule", "precision",
                                                  "offload_optimizer", "offload_params", "offload_activations")})
    return with_gpus(scenario, row.gpus).model_copy(update={"strategy": type(scenario.strategy).model_validate(strategy)})


def _infeasible_message(scenario: TrainScenario, counts: list[int], closest: tuple | None) -> str:
    if closest is None:
        return (f"no configuration of {scenario.model if isinstance(scenario.model, str) else scenario.model.name} "
                f"on {counts} GPUs passes the structural rules; check the batch (it must divide over dp) "
                "and the GPU count")
    shortfall, gpus, row = closest
    return (f"no configuration fits in memory on {', '.join(map(str, counts))} GPUs; the closest "
            f"({gpus} GPUs: tp={row['tp']} pp={row['pp']} dp={row['dp']} zero={row['zero']} "
            f"recompute={RECOMPUTE_NAMES[row['recompute']]} micro_batch={row['micro_batch']}) is "
            f"{shortfall / GiB:.1f} GiB per GPU short. To make it fit: more GPUs (ZeRO-3 divides "
            "model states by the data-parallel size), a smaller micro-batch or sequence, full "
            "recomputation, or offloading to host memory or NVMe (plan with --offload; predict with "
            "--offload-optimizer/--offload-params/--offload-activations)")


@dataclass(frozen=True)
class _Choice:
    """One configuration kept for the report: its GPU count's context and its one-row table."""

    score: float
    memory: float
    gpus: int
    breaks: tuple
    ctx: TrainContext
    row: Candidates


@dataclass
class _Search:
    """What the evaluation of every GPU count's space gathers for the report."""

    objective: Objective
    space: SearchSpace
    top_k: int
    rejected: dict[str, int] = field(default_factory=dict)
    ranked: list[_Choice] = field(default_factory=list)
    #: The best configuration of each offload choice (optimizer, parameters, activations codes).
    by_offload: dict[tuple[int, int, int], _Choice] = field(default_factory=dict)
    summaries: list[GpuCountSummary] = field(default_factory=list)
    closest: tuple | None = None  # (GiB short, GPUs, row) of the configuration nearest to fitting
    eval_seconds: float = 0.0

    def add(self, gpus: int, ctx: TrainContext, sp: Space, progress: Progress | None) -> None:
        """Evaluate one GPU count's space and keep its top rows, its best per offload choice, and
        the configuration closest to fitting."""
        for reason, count in sp.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        t0 = time.perf_counter()
        ev = evaluate_table(ctx, sp.candidates, progress)
        self.eval_seconds += time.perf_counter() - t0
        if ev is None:
            self.summaries.append(GpuCountSummary(gpus=gpus, configs_evaluated=0, configs_feasible=0,
                                                  best_tokens_per_s=None, best_mfu=None))
            return
        c = sp.candidates
        fits, score = score_space(ev, self.objective, gpus, ctx.cluster.gpu.tdp_w, self.space.headroom,
                                  self.space.memory_bound_ratio)
        self._note_misfits(fits, ev, gpus, c)
        n_fit = int(fits.sum())
        best_i = int(np.argmax(score)) if n_fit else None
        self.summaries.append(GpuCountSummary(
            gpus=gpus, configs_evaluated=len(c), configs_feasible=n_fit,
            best_tokens_per_s=float(ev.tokens_per_s[best_i]) if n_fit else None,
            best_mfu=float(ev.mfu[best_i]) if n_fit else None))
        if not n_fit:
            return
        breaks = np.stack(tie_breaks(c), axis=1)

        def choice(i: int) -> _Choice:
            return _Choice(float(score[i]), float(ev.memory_bytes[i]), gpus, tuple(breaks[i].tolist()), ctx,
                           c.take(np.array([i])))

        if c.offloads.any():
            codes = c.offload_optimizer * 16 + c.offload_params * 4 + c.offload_activations
            for code in np.unique(codes[fits]):
                rows = np.flatnonzero(fits & (codes == code))
                i = int(rows[np.argmax(score[rows])])
                key = (int(code) // 16, int(code) // 4 % 4, int(code) % 4)
                if key not in self.by_offload or score[i] > self.by_offload[key].score:
                    self.by_offload[key] = choice(i)
        self.ranked.extend(choice(int(i)) for i in rank_rows(score, ev.memory_bytes, c)[:self.top_k])

    def _note_misfits(self, fits: np.ndarray, ev: StepEvaluation, gpus: int, c: Candidates) -> None:
        if fits.all():
            return
        self.rejected["does not fit in memory"] = self.rejected.get("does not fit in memory", 0) + int((~fits).sum())
        limit = ev.capacity_bytes * (1.0 - self.space.headroom) / self.space.memory_bound_ratio
        i = int(np.argmin(np.where(fits, np.inf, ev.required_bytes)))
        short = float(ev.required_bytes[i] - limit)
        if self.closest is None or short < self.closest[0]:
            self.closest = (short, gpus, c.row(i))

    def top(self) -> list[_Choice]:
        """The kept rows of every GPU count in one order: by score (ties within 1e-9 of the best),
        less memory, fewer GPUs, then :func:`tie_breaks`, as :func:`rank_rows` orders each count."""
        best = max(r.score for r in self.ranked)
        return sorted(self.ranked, key=lambda r: (-_tied(r.score, best), r.memory, r.gpus, r.breaks))[:self.top_k]


def _offload_option(choice: _Choice) -> OffloadOption:
    r = explain(choice.ctx, choice.row)
    return OffloadOption(
        offload_optimizer=r.offload_optimizer, offload_params=r.offload_params,
        offload_activations=r.offload_activations, gpus=choice.gpus, tokens_per_s=r.tokens_per_s,
        step_time_s=r.step_time_s, mfu=r.mfu, binding_resource=r.binding_resource,
        memory_gb_per_tier=r.memory_gb_per_tier, config=f"{r.layout} zero{r.zero} mb{r.micro_batch} {r.recompute}")


def _costs(summaries: list[GpuCountSummary], tokens: float | None, price_per_gpu_hour: float | None,
           tdp_w: float) -> None:
    """Mark the Pareto front of throughput against GPU count (a count is on it when no smaller
    count is at least as fast) and, given the tokens to train, each count's days, dollars and
    energy."""
    fastest_so_far = -np.inf
    for summary in sorted(summaries, key=lambda s: s.gpus):
        if summary.best_tokens_per_s is not None and summary.best_tokens_per_s > fastest_so_far:
            summary.on_pareto_front = True
            fastest_so_far = summary.best_tokens_per_s
        if tokens and summary.best_tokens_per_s:
            seconds = tokens / summary.best_tokens_per_s
            summary.days = seconds / 86400
            summary.energy_mwh = seconds * summary.gpus * tdp_w / 3.6e9
            if price_per_gpu_hour is not None:
                summary.dollars = seconds / 3600 * summary.gpus * price_per_gpu_hour


def _check_size(space: SearchSpace, gpu_counts: list[int], resolved: list) -> None:
    """Refuse, before enumerating anything, a search too large for memory or reasonable time: its
    parallel layouts, counted (everything else is crossed only with the layouts that can run)."""
    sizes = [layout_count(ctx.model.moe is not None, gpus, space) for gpus, (_, ctx) in zip(gpu_counts, resolved)]
    largest = max(sizes)
    if largest > MAX_SEARCH_LAYOUTS_PER_COUNT:
        gpus = gpu_counts[sizes.index(largest)]
        raise SpecError(f"the search on {gpus:,} GPUs has {largest:,} parallel layouts, more than the "
                        f"{MAX_SEARCH_LAYOUTS_PER_COUNT:,} one GPU count may search; plan fewer GPUs or a count with "
                        "fewer divisors (a power of two)", field="--gpus")
    if sum(sizes) > MAX_SEARCH_LAYOUTS:
        raise SpecError(f"the search over {len(gpu_counts)} GPU counts has {sum(sizes):,} parallel layouts, "
                        f"more than {MAX_SEARCH_LAYOUTS:,}; plan fewer GPU counts", field="--gpus")


def plan_train(  # noqa: PLR0913 - the search's options
    scenario: TrainScenario,
    gpu_counts: list[int],
    *,
    objective: Objective = "throughput",
    space: SearchSpace | None = None,
    top_k: int = 5,
    tokens: float | None = None,
    price_per_gpu_hour: float | None = None,
    progress: Progress | None = None,
) -> PlanResult:
    """Search every configuration of ``scenario``'s model on each of ``gpu_counts`` GPUs (see the
    module docstring) and report the best, the top ``top_k`` and the best per offload choice."""
    start = time.perf_counter()
    price_source = "--price-per-gpu-hour" if price_per_gpu_hour is not None else None
    if price_per_gpu_hour is None and (listed := list_price(scenario.hardware.gpu)) is not None:
        price_per_gpu_hour, price_source = listed.dollars_per_gpu_hour, f"catalog: {listed.label}"
    resolved = [resolve_train(with_gpus(scenario, gpus)) for gpus in gpu_counts]
    scenario = resolved[0][0]
    space = restrict_to_framework(space or SearchSpace(), scenario.framework)
    _check_size(space, gpu_counts, resolved)
    spaces = [(gpus, ctx, enumerate_space(ctx.model, gpus, ctx.cluster.gpus_per_node, ctx.workload, space,
                                          has_nvme=ctx.cluster.node.nvme is not None))
              for gpus, (_, ctx) in zip(gpu_counts, resolved)]
    total_rows = sum(len(sp.candidates) for _, _, sp in spaces)
    search = _Search(objective, space, top_k)
    done = 0
    for gpus, ctx, sp in spaces:
        search.add(gpus, ctx, sp, None if progress is None else (lambda d, n, base=done: progress(base + d, total_rows)))
        done += len(sp.candidates)
    search_seconds = time.perf_counter() - start
    if not search.ranked:
        raise InfeasibleError(_infeasible_message(scenario, gpu_counts, search.closest), field="plan")
    top = [explain(choice.ctx, choice.row) for choice in search.top()]
    best = top[0]
    options = [_offload_option(choice) for choice in sorted(search.by_offload.values(), key=lambda v: -v.score)]
    tdp_w = spaces[0][1].cluster.gpu.tdp_w
    summaries = search.summaries
    _costs(summaries, tokens, price_per_gpu_hour, tdp_w)
    days = tokens / best.tokens_per_s / 86400 if tokens else None
    dollars = days * 24 * best.gpus * price_per_gpu_hour if (days is not None and price_per_gpu_hour is not None) else None
    configs_evaluated = sum(s.configs_evaluated for s in summaries)
    return PlanResult(
        model=best.model, gpu=best.gpu, objective=objective, gpus=list(gpu_counts),
        global_batch=scenario.workload.global_batch, seq_len=scenario.workload.seq_len,
        configs_total=sum(sp.total for _, _, sp in spaces), configs_evaluated=configs_evaluated,
        configs_feasible=sum(s.configs_feasible for s in summaries), rejected=search.rejected,
        search_seconds=search_seconds, evaluations_per_second=configs_evaluated / max(search.eval_seconds, 1e-9),
        best=best, top=top, why_best=explain_difference(best, top[1]) if len(top) > 1 else ["only one configuration fits"],
        by_gpu_count=summaries, tokens=tokens, price_per_gpu_hour=price_per_gpu_hour, price_source=price_source,
        days=days, dollars=dollars,
        assumptions=[f"memory headroom {space.headroom:.0%}"
                     + (f"; fits only where {space.memory_bound_ratio:.2f}x the predicted peak (the 90% upper bound "
                        "of sextant validate memory) fits" if space.memory_bound_ratio > 1 else
                        "; fits by the predicted peak (no margin for its error)"), "energy at TDP for the whole run (an upper bound)",
                     "GPipe not searched: same step time as 1F1B, more memory"]
        + (["offloading searched (pp = 1 rows): optimizer none/cpu/nvme/interleaved, parameters and activations "
            "none/cpu/nvme"] if search.by_offload else []),
        offload_options=options,
    )
