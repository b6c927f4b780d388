"""``plan serve``: where to keep weights and KV cache, how large a batch to run, and on several GPUs
how to split them into replicas of tensor-parallel and pipeline stages."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sextant.cli.emit import EMIT_OUT, EMIT_SERVE, check_emit, finish, launch_for
from sextant.cli.output import PLOT, check_top
from sextant.cli.render import listing, report_console, with_progress
from sextant.cli.serve_cmds import (
    AS_JSON,
    EXPERT_POPULARITY,
    GPU,
    INPUT_LEN,
    KV_PRECISION,
    MODEL,
    OUTPUT_LEN,
    PAGEABLE,
    PROFILE,
    ROUTING_TRACE,
    SCENARIO,
    ZIPF_EXPONENT,
    KVChoice,
    ServePrecision,
    _put,
    put_gpus,
    put_host_and_routing,
    scenario_tree,
)
from sextant.errors import SpecError
from sextant.export import SERVE_FORMATS

Opt = typer.Option


def plan_serve_cmd(  # noqa: PLR0913 - the flags are the interface
    scenario: Optional[Path] = SCENARIO,
    model: Optional[str] = MODEL,
    framework: Optional[str] = Opt(None, help="Serving preset, e.g. flexgen-2023, zero-inference-2023, vllm-2024."),
    gpu: Optional[str] = GPU,
    node: Optional[str] = Opt(None, help="Catalog node (default: the GPU's usual node): its host memory and drives."),
    gpus: Optional[int] = Opt(None, help="GPUs to serve with (default: --tp x --pp, else 1); split into replicas of "
                                         "tp x pp GPUs."),
    tp: Optional[int] = Opt(None, help="Tensor-parallel degree of each replica (default: every degree that fits "
                                       "is searched)."),
    pp: Optional[int] = Opt(None, help="Pipeline stages of each replica (default: every degree that divides the "
                                       "layers is searched, for replicas that hold the model on their GPUs)."),
    precision: Optional[str] = Opt(None, help="Weight precision: bf16, fp16, fp8, int8, w4a16 or fp4; with --rate "
                                              "a list searches each (bf16,fp8) and keeps each GPU type's cheapest."),
    kv_precision: Optional[KVChoice] = KV_PRECISION,
    input_len: Optional[int] = INPUT_LEN,
    output_len: Optional[int] = OUTPUT_LEN,
    num_requests: Optional[int] = Opt(None, help="Requests, all at time 0 (the largest batch searched)."),
    tpot_slo: Optional[float] = Opt(None, help="Time-per-output-token objective, ms: the best throughput whose "
                                               "every request decodes within it."),
    rate: Optional[float] = Opt(None, help="Live traffic, requests/s: plan the fewest (or cheapest) GPUs that serve it "
                                           "within --ttft-slo/--tpot-slo at --slo-percentile; --gpu may list several "
                                           "types (h100-sxm,a10g,l4)."),
    ttft_slo: Optional[float] = Opt(None, help="With --rate: time-to-first-token objective, ms."),
    slo_percentile: float = Opt(99, help="With --rate: the percentile the objectives hold at (50, 90 or 99)."),
    price: Optional[list[str]] = Opt(None, help="With --rate: dollars per GPU-hour, GPU=DOLLARS (repeat per GPU "
                                                "type; default: the catalog's dated on-demand list prices); ranks by "
                                                "cost and reports dollars per million tokens."),
    pageable: Optional[bool] = PAGEABLE,
    expert_popularity: Optional[str] = EXPERT_POPULARITY,
    zipf_exponent: Optional[float] = ZIPF_EXPONENT,
    routing_trace: Optional[Path] = ROUTING_TRACE,
    profile: Optional[Path] = PROFILE,
    top: int = Opt(5, help="How many placements to list, each at its best batch (the JSON's `top` holds as many "
                           "fastest configurations, simulated over the whole workload)."),
    plot: Optional[Path] = PLOT,
    emit: Optional[str] = EMIT_SERVE,
    emit_out: Optional[Path] = EMIT_OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Search where each replica keeps its weights (GPU, host DRAM, NVMe, or a split; for a
    mixture-of-experts model also only its routed experts, with a GPU cache of the popular ones)
    and KV cache (GPU, DRAM, NVMe; attention on the CPU or GPU), its batch, and on several GPUs
    the tensor-parallel and pipeline degrees of the replicas, for offline throughput."""
    from sextant.plan.serve_search import plan_serve
    from sextant.spec.serving import parse_serve_scenario

    if plot is not None:
        from sextant.plots import check_plot_path

        check_plot_path(plot)
    check_emit(emit, emit_out, SERVE_FORMATS)
    if rate is not None:
        _plan_live(scenario, model, framework, gpu, tp, precision, input_len, output_len, rate, ttft_slo, tpot_slo,
                   slo_percentile, price, as_json, plot, (emit, emit_out))
        return
    for name, value in (("--ttft-slo", ttft_slo), ("--price", price)):
        if value is not None:
            raise SpecError(f"{name} applies to live traffic: give --rate", field=name.lstrip("-"))
    check_top(top)
    tree = scenario_tree(scenario, model, framework, gpu, node, profile)
    precisions = _precisions(precision)
    if len(precisions) > 1:
        raise SpecError("several precisions are searched for live traffic (--rate); the offline plan takes one",
                        field="precision")
    for key, value in (("tp", tp), ("pp", pp), ("precision", precisions[0] if precisions else None),
                       ("kv_precision", kv_precision)):
        _put(tree, "deployment", key, value)
    for key, value in (("input_len", input_len), ("output_len", output_len), ("num_requests", num_requests)):
        _put(tree, "workload", key, value)
    put_host_and_routing(tree, pageable, expert_popularity, zipf_exponent, routing_trace)
    _put(tree, "slo", "tpot_ms", tpot_slo)
    put_gpus(tree, gpus)
    base = parse_serve_scenario(tree, from_flags=scenario is None)
    plan = with_progress("searching placements", as_json, lambda progress: plan_serve(base, top=top, progress=progress))
    if plot is not None:
        from sextant.plots import plot_plan_serve

        plot_plan_serve(plan, plot)
    launch = None
    if emit is not None:
        from sextant.plan.serve_search import chosen_scenario

        launch = launch_for(chosen_scenario(base, plan.best_policy), emit, planned=True)
    finish(plan, launch, emit_out, as_json, lambda: render_plan_serve(plan, top, report_console()))


def _precisions(text: str | None) -> list[str]:
    """``--precision``: one weight precision, or a comma list (live plans search each)."""
    if text is None:
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    known = [p.value for p in ServePrecision]
    for name in names:
        if name not in known:
            raise SpecError(f"'{name}' is not a weight precision; choose from {', '.join(known)}", field="precision")
    if not names:
        raise SpecError(f"give a precision: {', '.join(known)}", field="precision")
    return list(dict.fromkeys(names))


def _prices(items: list[str] | None) -> dict[str, float]:
    prices = {}
    for item in items or []:
        name, _, value = item.partition("=")
        try:
            dollars = float(value)
        except ValueError:
            raise SpecError(f"--price {item!r}: write GPU=DOLLARS per GPU-hour, e.g. h100-sxm=6.88",
                            field="price") from None
        if not dollars > 0 or dollars == float("inf"):
            raise SpecError(f"--price {item!r}: dollars per GPU-hour must be a positive number", field="price")
        prices[name.strip()] = dollars
    return prices


def _plan_live(scenario, model, framework, gpu, tp, precision, input_len, output_len,  # noqa: PLR0913
               rate, ttft_slo, tpot_slo, percentile, price, as_json, plot=None, emit=(None, None)) -> None:
    """``plan serve --rate``: the fewest or cheapest GPUs per type for live traffic within objectives."""
    from sextant.plan.serve_capacity import plan_capacity
    from sextant.spec.serving import parse_serve_scenario

    gpus = [g.strip() for g in (gpu or "h100-sxm").split(",") if g.strip()]
    tree = scenario_tree(scenario, model, framework, gpus[0], None, None)
    tree.setdefault("framework", "vllm-v1-0.15")  # the engine people serve live traffic with, unless stated
    precisions = _precisions(precision)
    for key, value in (("tp", tp), ("precision", precisions[0] if precisions else None)):
        _put(tree, "deployment", key, value)
    for key, value in (("input_len", input_len), ("output_len", output_len)):
        _put(tree, "workload", key, value)
    _put(tree, "slo", "ttft_ms", ttft_slo)
    _put(tree, "slo", "tpot_ms", tpot_slo)
    base = parse_serve_scenario(tree, from_flags=scenario is None)
    if not rate > 0 or rate == float("inf"):
        raise SpecError(f"--rate must be a positive number of requests per second (got {rate})", field="rate")
    prices = _prices(price)
    plan = with_progress("measuring each layout's capacity", as_json, lambda progress: plan_capacity(
        base, rate, gpus, percentile=percentile / 100, prices=prices, precisions=precisions or None,
        progress=lambda done: progress(done, None)))
    if plot is not None:
        from sextant.plots import plot_plan_serve

        plot_plan_serve(plan, plot)
    launch = None
    if emit[0] is not None:
        from sextant.plan.serve_capacity import chosen_scenario

        launch = launch_for(chosen_scenario(base, plan), emit[0], planned=True)
    finish(plan, launch, emit[1], as_json, lambda: _render_live(plan, base, percentile))


def _render_live(plan, base, percentile: float) -> None:
    out = report_console()
    objectives = " and ".join(f"{name} p{percentile:g} within {v:g} ms" for name, v in
                              (("TTFT", plan.ttft_slo_ms), ("TPOT", plan.tpot_slo_ms)) if v is not None)
    out.print(f"[bold]{plan.model}[/bold] at {plan.rate:g} requests/s, {objectives} ({plan.framework}); "
              f"{plan.simulations} simulations")
    table = listing("cheapest deployment of each GPU type (replicas behind one router, simulated whole)",
                    ("GPU", "weights", "tp", "replica capacity req/s", "replicas", "GPUs", "$/hour",
                     "$/M output tokens", f"TTFT p{percentile:g} ms", f"TPOT p{percentile:g} ms", "meets"),
                    text={"GPU", "weights", "meets"})
    for e in plan.entries:
        table.add_row(e.gpu, e.precision, str(e.tp) + (f" pp{e.pp}" if e.pp > 1 else ""), f"{e.capacity_rps:.2f}", str(e.replicas), str(e.gpus),
                      "-" if e.dollars_per_hour is None else f"{e.dollars_per_hour:,.2f}",
                      "-" if e.dollars_per_million_output_tokens is None else f"{e.dollars_per_million_output_tokens:.3f}",
                      f"{e.ttft_ms:.0f}", f"{e.tpot_ms:.1f}", "yes" if e.meets_slo else "no")
    out.print(table)
    for name, why in plan.rejected.items():
        out.print(f"  {name}: {why}")
    if plan.prices:
        out.print("  dollars per GPU-hour: " + "; ".join(f"{gpu} {plan.prices[gpu]:,.2f} ({plan.price_sources[gpu]})"
                                                      for gpu in plan.prices))
    if plan.mix is not None:
        m = plan.mix
        parts = " + ".join(f"{p.replicas} x {p.gpu} tp {p.tp}{f' pp {p.pp}' if p.pp > 1 else ''} {p.precision} ({p.rate:.1f} req/s, TTFT {p.ttft_ms:.0f} ms, "
                           f"TPOT {p.tpot_ms:.1f} ms)" for p in m.parts)
        missed = "" if all(p.meets_slo for p in m.parts) else " [red](a part misses the objectives)[/red]"
        out.print(f"cheaper as a mix: {parts}: ${m.dollars_per_hour:,.2f}/hour, "
                  f"{m.saves_over_cheapest_single:.0%} less than one type{missed}")
    if plan.entries:
        b = plan.entries[0]
        w = base.workload
        lengths = "".join(f" --{k.replace('_', '-')} {v}" for k, v in (("input_len", w.input_len),
                                                                        ("output_len", w.output_len))
                          if isinstance(v, int))
        pp = f" --pp {b.pp}" if b.pp > 1 else ""
        out.print(f"best: {b.replicas} x {b.gpu} tp {b.tp}{pp.replace(' --', ' ')} ({b.precision}); as `sextant predict "
                  f"serve` flags: --gpu {b.gpu} --gpus {b.gpus} --tp {b.tp}{pp} --replicas {b.replicas} --precision "
                  f"{b.precision} "
                  f"--rate {plan.rate:g}{lengths}" + (f" --framework {plan.framework}" if plan.framework else ""))


def render_plan_serve(plan, shown: int, console) -> None:
    from sextant.cost.tiers import RESOURCE_LABELS

    b = plan.best
    bound = f", each token within {plan.tpot_slo_ms:g} ms" if plan.tpot_slo_ms is not None else ""
    console.print(f"[bold]{plan.model}[/bold] on {b.gpus} x {plan.gpu} ({plan.node}): {b.num_requests} requests of "
                  f"{b.precision} weights, {b.kv_precision} KV, all at time 0{bound}")
    console.print(f"evaluated {plan.configs_evaluated} configurations, {plan.configs_feasible} run; rejected: "
                  + (", ".join(f"{k} {v}" for k, v in sorted(plan.rejected.items())) or "none"))
    several = b.gpus > 1
    columns = (*(("replicas",) if several else ()), "weights", "KV cache", "batch", "GPU batches", "tokens/s",
               "ms/token", "bound by")
    table = listing("best batch of each placement (scored on one batch per engine)", columns,
                    text={"replicas", "weights", "KV cache", "bound by"})
    for e in plan.strategies[:shown]:
        p = e.policy
        table.add_row(*((p.layout,) if several else ()), p.weights_home, p.kv_home, str(p.max_batch), str(p.micro_batches),
                      f"{e.output_tokens_per_s:,.2f}", f"{e.tpot_ms:,.1f}",
                      RESOURCE_LABELS.get(e.binding_resource, e.binding_resource))
    console.print(table)
    if len(plan.strategies) > shown:
        console.print(f"({len(plan.strategies) - shown} slower placements not shown; --top or --json lists them)")
    p = plan.best_policy
    per = " per pipeline stage" if p.pp > 1 else " per replica" if several else ""
    console.print(f"best: {p.strategy}, batch {p.max_batch}{per} in "
                  f"{p.micro_batches} GPU batch(es): "
                  f"{b.output_tokens_per_s:,.2f} output tokens/s over the whole workload; bound by "
                  f"{RESOURCE_LABELS.get(b.binding_resource, b.binding_resource)}")
    console.print("  as `sextant predict serve` flags: " + _flags(p))


def _flags(p) -> str:
    """The placement as ``predict serve`` flags (settings at their defaults left out)."""
    from sextant.spec.scenario import flag_of
    from sextant.spec.serving import ServeOffload

    flags = [f"--max-batch {p.max_batch}"] + ([f"--gpus {p.gpus} --tp {p.tp}" + (f" --pp {p.pp}" if p.pp > 1 else "")
                                               + f" --replicas {p.replicas}"] if p.gpus > 1 else [])
    for key, value in p.offload().items():
        if value != ServeOffload.model_fields[key].default:
            flags.append(f"{flag_of('offload', key)} {value:g}" if isinstance(value, float)
                         else f"{flag_of('offload', key)} {value}")
    return " ".join(flags)
