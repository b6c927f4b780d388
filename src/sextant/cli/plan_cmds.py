"""``plan train``: search the whole strategy space and explain the best configuration."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from sextant.cli.emit import EMIT_OUT, EMIT_TRAIN, check_emit, finish, launch_for
from sextant.cli.output import PLOT, check_top, emit_json
from sextant.cli.render import listing, report_console, with_progress
from sextant.errors import SpecError
from sextant.export import TRAIN_FORMATS
from sextant.spec.limits import MAX_GPUS

Opt = typer.Option


class ObjectiveChoice(str, Enum):
    throughput = "throughput"
    time_to_train = "time-to-train"
    cost = "cost"
    energy = "energy"


def parse_gpu_counts(text: str) -> list[int]:
    """``512``, ``256,512,1024`` or ``256-4096`` (lo, 2*lo, 4*lo, ... up to hi)."""
    counts: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo <= 0 or hi < lo:
                    raise ValueError
                n = lo
                while n <= hi:
                    counts.append(n)
                    n *= 2
            else:
                counts.append(int(part))
    except ValueError:
        raise SpecError(f"'{text}' is not a GPU count, a list (256,512) or a range (256-4096)", field="--gpus") from None
    if not counts or min(counts) <= 0:
        raise SpecError(f"'{text}' must name positive GPU counts", field="--gpus")
    if max(counts) > MAX_GPUS:
        raise SpecError(f"{max(counts):,} GPUs is more than the {MAX_GPUS:,} a plan accepts", field="--gpus")
    if len(set(counts)) > MAX_GPU_COUNTS:
        raise SpecError(f"{len(set(counts))} GPU counts; a plan searches at most {MAX_GPU_COUNTS}", field="--gpus")
    return sorted(set(counts))


#: GPU counts one ``plan train`` searches (each is a whole search of its own).
MAX_GPU_COUNTS = 64


def _check_numbers(top: int, headroom: float, tokens: float | None, price_per_gpu_hour: float | None) -> None:
    """The plan's own flags, refused before the search when out of range."""
    check_top(top)
    if not 0.0 <= headroom < 0.5:
        raise SpecError(f"must be in [0, 0.5), got {headroom}", field="--headroom")
    if tokens is not None and not 0 < tokens < math.inf:
        raise SpecError(f"must be a positive finite number, got {tokens}", field="--tokens")
    if price_per_gpu_hour is not None and not 0 <= price_per_gpu_hour < math.inf:
        raise SpecError(f"must be a finite number, not negative, got {price_per_gpu_hour}", field="--price-per-gpu-hour")


def plan_train_cmd(  # noqa: PLR0913 - the flags are the interface
    scenario: Optional[Path] = Opt(None, "--scenario", "-s", help="YAML scenario; flags override its values."),
    model: Optional[str] = Opt(None, help="Catalog model name or path to a HuggingFace config.json."),
    gpu: Optional[str] = Opt(None, help="Catalog GPU name."),
    gpus: Optional[str] = Opt(None, help="GPU count, list (256,512,1024) or doubling range (256-4096)."),
    gpus_per_node: Optional[int] = Opt(None, help="GPUs per node (default: the GPU's usual node)."),
    node: Optional[str] = Opt(None, help="Catalog node, instead of the GPU's usual one."),
    network: Optional[str] = Opt(None, help="Network port type, e.g. ib-ndr-400, roce-400."),
    framework: Optional[str] = Opt(None, help="Framework preset (kernels, overlap)."),
    profile: Optional[Path] = Opt(None, help="Hardware profile JSON, e.g. from `sextant calibrate`."),
    global_batch: Optional[int] = Opt(None, help="Sequences per optimizer step."),
    seq_len: Optional[int] = Opt(None, help="Tokens per sequence."),
    precision: Optional[str] = Opt(None, help="bf16, fp16, fp8, tf32 or fp32 (not searched)."),
    objective: ObjectiveChoice = Opt(ObjectiveChoice.throughput, help="What to optimize."),
    tokens: Optional[float] = Opt(None, help="Token budget: report days (and dollars with a price)."),
    price_per_gpu_hour: Optional[float] = Opt(None, help="Dollars per GPU-hour, for cost (default: the catalog's "
                                                         "dated on-demand list price of the GPU, where it has one)."),
    top: int = Opt(5, help="How many configurations to report."),
    headroom: float = Opt(0.0, help="Fraction of GPU memory to leave free (0-0.5)."),
    memory_bound: bool = Opt(True, "--memory-bound/--point-estimate",
                             help="Keep the 90% upper bound on peak memory under capacity (default), or trust the estimate."),
    offload: Optional[bool] = Opt(None, "--offload/--no-offload",
                                  help="Search offloading to host memory and NVMe (default: when the job fits in one node)."),
    max_micro_batch: int = Opt(16, help="Largest micro-batch searched."),
    cross_node_tp: bool = Opt(False, "--cross-node-tp", help="Let tensor parallelism span nodes."),
    plot: Optional[Path] = PLOT,
    emit: Optional[str] = EMIT_TRAIN,
    emit_out: Optional[Path] = EMIT_OUT,
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the report."),
) -> None:
    """Find the best way to train: search every dp/tp/pp/cp(/ep) factorization, micro-batch,
    recomputation, sequence parallelism, ZeRO stage and pipeline interleaving; keep what fits.

    With no arguments: plans the built-in default scenario (Llama 3.1 8B on one 8x H100 node).
    """
    from sextant.plan.search import plan_train
    from sextant.plan.space import SearchSpace
    from sextant.spec.scenario import base_tree, parse_scenario, validate_tree

    tree: dict[str, Any] = base_tree(scenario, model, gpu)
    if scenario is None:
        tree.pop("strategy", None)  # the planner chooses the strategy
    if model is not None:
        tree["model"] = model
    if framework is not None:
        tree["framework"] = framework
    hw = tree.setdefault("hardware", {})
    for key, value in (("gpu", gpu), ("gpus_per_node", gpus_per_node), ("node", node), ("network", network),
                       ("profile", str(profile) if profile else None)):
        if value is not None:
            hw[key] = value
    counts = parse_gpu_counts(gpus) if gpus is not None else [int(hw.get("gpus", 8))]
    hw["gpus"] = counts[0]
    for key, value in (("global_batch", global_batch), ("seq_len", seq_len)):
        if value is not None:
            tree.setdefault("workload", {})[key] = value
    if precision is not None:
        tree.setdefault("strategy", {})["precision"] = precision
    _check_numbers(top, headroom, tokens, price_per_gpu_hour)
    parsed = parse_scenario(tree, source="options", from_flags=scenario is None)
    if plot is not None:
        from sextant.plots import check_plot_path

        check_plot_path(plot)
    check_emit(emit, emit_out, TRAIN_FORMATS)
    from sextant.resolve.intervals import memory_bound as memory_bound_of

    bound_ratio = memory_bound_of(parsed.framework).upper_ratio if memory_bound else 1.0
    space = validate_tree(SearchSpace, {"headroom": headroom, "memory_bound_ratio": bound_ratio,
                                        "max_micro_batch": max_micro_batch, "tp_within_node": not cross_node_tp,
                                        "offload": offload}, "options", from_flags=True)
    result = with_progress("searching", as_json, lambda progress: plan_train(
        parsed, counts, objective=objective.value, space=space, top_k=top, tokens=tokens,
        price_per_gpu_hour=price_per_gpu_hour, progress=progress))
    if plot is not None:
        from sextant.plots import plot_plan_train

        plot_plan_train(result, plot)
    launch = None
    if emit is not None:
        from sextant.plan.search import chosen_scenario

        launch = launch_for(chosen_scenario(parsed, result.best), emit, planned=True)
    finish(result, launch, emit_out, as_json, lambda: render_plan(result, report_console()))


OFFLOAD_ROWS_SHOWN = 6
#: Columns of words (left-aligned; numbers are right-aligned).
TEXT_COLUMNS = {"layout", "recompute", "offload", "offloaded", "largest part", "configuration", "bound by", "id",
                "published", "best found"}


def _offload_label(t) -> str:
    """Compact offload description of a result or offload option: opt:cpu par:nvme act:cpu, or -
    for none."""
    parts = [f"{k}:{v}" for k, v in (("opt", t.offload_optimizer), ("par", t.offload_params),
                                       ("act", t.offload_activations)) if v != "none"]
    return " ".join(parts) or "-"


def render_plan(result, console: Console) -> None:
    r = result
    console.print(f"[bold]{r.model} on {', '.join(map(str, r.gpus))}x {r.gpu}[/bold], global batch {r.global_batch} "
                  f"x {r.seq_len} tokens, objective {r.objective}")
    console.print(f"{r.configs_total:,} configurations enumerated, {r.configs_evaluated:,} evaluated in "
                  f"{r.search_seconds:.2f} s ({r.evaluations_per_second:,.0f}/s), {r.configs_feasible:,} fit")
    rejected = listing("rejected", ("reason", "configurations"), {"reason"})
    for reason, count in sorted(r.rejected.items(), key=lambda kv: -kv[1]):
        rejected.add_row(reason, f"{count:,}")
    console.print(rejected)
    several_counts = len(r.gpus) > 1
    offloading = any(_offload_label(t) != "-" for t in r.top)
    columns = ("#", *(("gpus",) if several_counts else ()), "layout", "ZeRO", "mb", "recompute",
               *(("offload",) if offloading else ()), "step s", "tokens/s", "MFU", "GiB", "largest part")
    table = listing(f"top {len(r.top)}", columns, TEXT_COLUMNS)
    for i, t in enumerate(r.top, 1):
        table.add_row(str(i), *((str(t.gpus),) if several_counts else ()), t.layout, str(t.zero),
                      str(t.micro_batch), t.recompute, *((_offload_label(t),) if offloading else ()),
                      f"{t.step_time_s:.3f}", f"{t.tokens_per_s:,.0f}", f"{t.mfu:.1%}",
                      f"{t.memory_gb_per_gpu['total']:.1f}", t.largest_part)
    console.print(table)
    if r.offload_options:
        opts = listing("offload strategies that fit, the best of each (memory: GiB per GPU)",
                       ("offloaded", "configuration", "tokens/s", "MFU", "GPU", "host", "NVMe", "bound by"),
                       TEXT_COLUMNS)
        for o in r.offload_options[:OFFLOAD_ROWS_SHOWN]:
            m = o.memory_gb_per_tier
            opts.add_row(_offload_label(o), o.config, f"{o.tokens_per_s:,.0f}", f"{o.mfu:.1%}", f"{m.get('gpu', 0):.1f}", f"{m.get('host', 0):.0f}", f"{m.get('nvme', 0):.0f}",
                         o.binding_resource)
        console.print(opts)
        if len(r.offload_options) > OFFLOAD_ROWS_SHOWN:
            console.print(f"  ... and {len(r.offload_options) - OFFLOAD_ROWS_SHOWN} slower offload choices (--json lists all)")
    for line in r.why_best:
        console.print(f"  {line}")
    console.print(f"  memory of the best: {r.best.fits_statement}"
                  + ("" if any("fits only where" in a for a in r.assumptions) else
                     "; chosen by the estimate (--point-estimate)"))
    if len(r.by_gpu_count) > 1 or r.tokens:
        counts = listing("by GPU count (* on the throughput/GPU-count Pareto front)",
                         ("gpus", "feasible", "best tokens/s", "MFU", "days", "dollars", "MWh"))
        for s in r.by_gpu_count:
            counts.add_row(f"{s.gpus}{'*' if s.on_pareto_front else ''}", f"{s.configs_feasible:,}",
                           f"{s.best_tokens_per_s:,.0f}" if s.best_tokens_per_s else "-",
                           f"{s.best_mfu:.1%}" if s.best_mfu else "-",
                           f"{s.days:.1f}" if s.days is not None else "-",
                           f"{s.dollars:,.0f}" if s.dollars is not None else "-",
                           f"{s.energy_mwh:,.1f}" if s.energy_mwh is not None else "-")
        console.print(counts)
    if r.days is not None:
        money = f", ${r.dollars:,.0f}" if r.dollars is not None else ""
        console.print(f"{r.tokens:.3g} tokens with the best configuration: {r.days:.1f} days{money}")
        if r.dollars is not None and r.price_source:
            console.print(f"  at ${r.price_per_gpu_hour:,.2f} per GPU-hour ({r.price_source})")


def validate_plan_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the table."),
    ledger: Optional[Path] = Opt(None, help="Ledger YAML (default: the built-in training ledger)."),
) -> None:
    """Rediscovery: where each published configuration ranks in the planner's search for the same
    model, GPU count, batch, precision and framework."""
    from sextant.validate.rediscover import rediscover

    report = rediscover(ledger)
    if as_json:
        emit_json(report.model_dump())
        return
    console = report_console()
    table = listing("published configuration's rank in the planner's search",
                    ("id", "gpus", "published", "rank", "top", "same recompute", "best found", "speed-up"),
                    TEXT_COLUMNS)
    for r in report.rows:
        label = r.id + (" (baseline)" if r.role == "baseline" else "")
        table.add_row(label, str(r.gpus), r.published_config, f"{r.rank}/{r.feasible}", f"{r.percentile:.0%}",
                      f"{r.rank_same_recompute}/{r.feasible_same_recompute}", r.best_config,
                      f"{r.published_step_time_s / r.best_step_time_s:.2f}x")
    console.print(table)
    pairs = listing("configurations measured on the same model, GPUs and batch: which ran faster",
                    ("faster", "slower", "measured speed-up", "predicted speed-up", "same order"), ("faster", "slower"))
    for p in report.pairs:
        pairs.add_row(p.faster, p.slower, f"{p.measured_speedup:.2f}x", f"{p.predicted_speedup:.2f}x",
                      "yes" if p.agrees else "NO")
    console.print(pairs)
    n = len(report.rows)
    console.print(f"{report.in_top_10_percent}/{n} published configurations in the top 10% "
                  f"({report.in_top_10_percent_same_recompute}/{n} among configurations with the same "
                  f"recomputation); best found at least as fast as published on {report.best_at_least_as_fast}/{n}")
    console.print(f"configurations their authors chose: {report.chosen_in_top_10_percent}/{report.chosen_rows} in "
                  f"the top 10% ({report.chosen_in_top_10_percent_same_recompute}/{report.chosen_rows} with the same "
                  f"recomputation); {n - report.chosen_rows} baselines published to be beaten; measured pairs in "
                  f"the predicted order: {report.pairs_agreeing}/{len(report.pairs)}")
