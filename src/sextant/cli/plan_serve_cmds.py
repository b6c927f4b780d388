"""``plan serve``: where to keep weights and KV cache, how large a batch to run, and on several GPUs
how to split them into replicas of tensor-parallel and pipeline stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from sextant.cli.render import listing, report_console, search_progress
from sextant.cli.serve_cmds import (
    AS_JSON,
    EXPERT_POPULARITY,
    GPU,
    INPUT_LEN,
    KV_PRECISION,
    MODEL,
    OUTPUT_LEN,
    PAGEABLE,
    PRECISION,
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
from sextant.cost.tiers import RESOURCE_LABELS
from sextant.spec.scenario import flag_of
from sextant.spec.serving import ServeOffload, parse_serve_scenario

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
    precision: Optional[ServePrecision] = PRECISION,
    kv_precision: Optional[KVChoice] = KV_PRECISION,
    input_len: Optional[int] = INPUT_LEN,
    output_len: Optional[int] = OUTPUT_LEN,
    num_requests: Optional[int] = Opt(None, help="Requests, all at time 0 (the largest batch searched)."),
    tpot_slo: Optional[float] = Opt(None, help="Time-per-output-token objective, ms: the best throughput whose "
                                               "every request decodes within it."),
    pageable: Optional[bool] = PAGEABLE,
    expert_popularity: Optional[str] = EXPERT_POPULARITY,
    zipf_exponent: Optional[float] = ZIPF_EXPONENT,
    routing_trace: Optional[Path] = ROUTING_TRACE,
    profile: Optional[Path] = PROFILE,
    top: int = Opt(5, help="How many placements to list, each at its best batch (the JSON's `top` holds as many "
                           "fastest configurations, simulated over the whole workload)."),
    as_json: bool = AS_JSON,
) -> None:
    """Search where each replica keeps its weights (GPU, host DRAM, NVMe, or a split; for a
    mixture-of-experts model also only its routed experts, with a GPU cache of the popular ones)
    and KV cache (GPU, DRAM, NVMe; attention on the CPU or GPU), its batch, and on several GPUs
    the tensor-parallel and pipeline degrees of the replicas, for offline throughput."""
    from sextant.plan.serve_search import plan_serve

    tree = scenario_tree(scenario, model, framework, gpu, node, profile)
    for key, value in (("tp", tp), ("pp", pp), ("precision", precision), ("kv_precision", kv_precision)):
        _put(tree, "deployment", key, value)
    for key, value in (("input_len", input_len), ("output_len", output_len), ("num_requests", num_requests)):
        _put(tree, "workload", key, value)
    put_host_and_routing(tree, pageable, expert_popularity, zipf_exponent, routing_trace)
    _put(tree, "slo", "tpot_ms", tpot_slo)
    put_gpus(tree, gpus)
    base = parse_serve_scenario(tree, from_flags=scenario is None)
    console = Console(stderr=True)
    with search_progress(console, "searching placements", quiet=as_json) as bar:
        task = bar.add_task("plan", total=None)
        plan = plan_serve(base, top=top, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        typer.echo(json.dumps(plan.model_dump(), indent=2))
        return
    render_plan_serve(plan, top, report_console())


def render_plan_serve(plan, shown: int, console) -> None:
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
    flags = [f"--max-batch {p.max_batch}"] + ([f"--gpus {p.gpus} --tp {p.tp}" + (f" --pp {p.pp}" if p.pp > 1 else "")
                                               + f" --replicas {p.replicas}"] if p.gpus > 1 else [])
    for key, value in p.offload().items():
        if value != ServeOffload.model_fields[key].default:
            flags.append(f"{flag_of('offload', key)} {value:g}" if isinstance(value, float)
                         else f"{flag_of('offload', key)} {value}")
    return " ".join(flags)
