"""``predict serve`` and ``validate serve``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sextant.cli.emit import EMIT_OUT, EMIT_SERVE, check_emit, finish, launch_for
from sextant.cli.output import PLOT, emit_json
from sextant.cli.render import report_console
from sextant.errors import SpecError
from sextant.export import SERVE_FORMATS
from sextant.files import check_output_path

Opt = typer.Option


class ServePrecision(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    int8 = "int8"
    w4a16 = "w4a16"
    fp4 = "fp4"


class KVChoice(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    int8 = "int8"
    int4 = "int4"


class BatchingChoice(str, Enum):
    static = "static"
    continuous = "continuous"
    chunked = "chunked"


def _put(tree: dict[str, Any], section: str, key: str, value: Any) -> None:
    if value is not None:
        tree.setdefault(section, {})[key] = value.value if isinstance(value, Enum) else value


def scenario_tree(scenario: Path | None, model: str | None, framework: str | None, gpu: str | None,
                  node: str | None, profile: Path | None) -> dict[str, Any]:
    """The serving scenario file's values (or none) with the model, preset and hardware flags over them."""
    from sextant.spec.serving import load_serve_scenario

    tree: dict[str, Any] = load_serve_scenario(scenario).model_dump(exclude_unset=True) if scenario else {}
    if model is not None:
        tree["model"] = model
    if framework is not None:
        tree["framework"] = framework
    for key, value in (("gpu", gpu), ("node", node), ("profile", str(profile) if profile else None)):
        _put(tree, "hardware", key, value)
    return tree


#: Options ``predict serve`` and ``plan serve`` share: how host copies are made and how a
#: mixture-of-experts model's tokens route (what an expert cache catches).
# Options predict serve and plan serve share, one definition each.
SCENARIO = Opt(None, "--scenario", "-s", help="YAML serving scenario; flags override it.")
MODEL = Opt(None, help="Catalog model name or path to a HuggingFace config.json.")
GPU = Opt(None, help="Catalog GPU name.")
PRECISION = Opt(None, help="Weight precision.")
KV_PRECISION = Opt(None, help="KV-cache precision (default fp8 with fp8 weights).")
INPUT_LEN = Opt(None, help="Input tokens per request.")
OUTPUT_LEN = Opt(None, help="Output tokens per request.")
PROFILE = Opt(None, help="Hardware profile JSON (default: the built-in one).")
AS_JSON = Opt(False, "--json", help="Print one JSON object instead of the report.")
PAGEABLE = Opt(None, "--pageable/--pinned", help="Host weights in pageable or pinned memory.")
EXPERT_POPULARITY = Opt(None, help="Routing distribution over experts: uniform or zipf.")
ZIPF_EXPONENT = Opt(None, help="Exponent of the Zipf expert popularity.")
ROUTING_TRACE = Opt(None, help="CSV of routed experts (layer, expert) for the expert cache.")


def put_host_and_routing(tree: dict[str, Any], pageable: bool | None, expert_popularity: str | None,
                         zipf_exponent: float | None, routing_trace: Path | None) -> None:
    """The shared options above into the scenario's ``offload`` section (those given)."""
    for key, value in (("pinned", None if pageable is None else not pageable),
                       ("expert_popularity", expert_popularity), ("zipf_exponent", zipf_exponent),
                       ("routing_trace", str(routing_trace) if routing_trace else None)):
        _put(tree, "offload", key, value)


def _put_strategies(tree: dict[str, Any], draft_model: str | None, spec_tokens: int | None,
                    acceptance_rate: float | None, spec_target: str | None, prefill_replicas: int | None,
                    decode_replicas: int | None) -> None:
    """Speculative decoding and disaggregation from their flags, when any is given; a speculative
    flag without a draft model (from --draft-model or the scenario) is an error, not ignored."""
    from sextant.spec.scenario import flag_of

    given = {key: value for key, value in (("num_tokens", spec_tokens), ("acceptance_rate", acceptance_rate),
                                           ("target_device", spec_target)) if value is not None}
    if draft_model is not None:
        tree["speculative"] = {"draft_model": draft_model, **given}
    elif given:
        if "speculative" not in tree:
            flag = flag_of("speculative", next(iter(given)))
            raise SpecError("needs speculative decoding: give --draft-model", field=flag)
        tree["speculative"].update(given)
    if prefill_replicas is not None or decode_replicas is not None:
        # One side given: the other is one instance (stated in the help); a 0 is refused by the spec.
        tree["disaggregation"] = {"prefill_replicas": 1 if prefill_replicas is None else prefill_replicas,
                                  "decode_replicas": 1 if decode_replicas is None else decode_replicas}


def _progress_bar(console: Console, total_hint: str):
    bar = Progress(TextColumn(total_hint), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)
    return bar


def put_gpus(tree: dict, gpus: int | None) -> None:
    """``hardware.gpus``: as given, else as the scenario sets it, else what its replicas need."""
    from sextant.spec.serving import default_gpus

    if gpus is not None:
        _put(tree, "hardware", "gpus", gpus)
    else:
        default_gpus(tree)


def predict_serve_cmd(  # noqa: PLR0913 - the flags are the interface scripts call
    scenario: Optional[Path] = SCENARIO,
    model: Optional[str] = MODEL,
    framework: Optional[str] = Opt(None, help="Serving preset: vllm-2024, sarathi-serve-2024, trtllm-session-2023, "
                                              "trtllm-inflight-2025."),
    gpu: Optional[str] = GPU,
    gpus: Optional[int] = Opt(None, help="GPUs in total (default tp * pp * replicas)."),
    tp: Optional[int] = Opt(None, help="Tensor-parallel degree per replica."),
    pp: Optional[int] = Opt(None, help="Pipeline-parallel degree per replica."),
    ep: Optional[int] = Opt(None, help="Expert-parallel degree inside the tp group (MoE)."),
    replicas: Optional[int] = Opt(None, help="Model replicas behind the router."),
    precision: Optional[ServePrecision] = PRECISION,
    kv_precision: Optional[KVChoice] = KV_PRECISION,
    batching: Optional[BatchingChoice] = Opt(None, help="static, continuous (vLLM) or chunked (Sarathi-Serve)."),
    max_batch: Optional[int] = Opt(None, help="Sequences running at once."),
    token_budget: Optional[int] = Opt(None, help="Tokens per iteration (max_num_batched_tokens)."),
    kv_allocation: Optional[str] = Opt(None, help="on_demand (preempts when full) or reserve."),
    preemption: Optional[str] = Opt(None, help="recompute or swap."),
    router: Optional[str] = Opt(None, help="round_robin or least_loaded."),
    iteration_overhead_ms: Optional[float] = Opt(None, help="Engine CPU work per iteration, ms."),
    input_len: Optional[int] = INPUT_LEN,
    output_len: Optional[int] = OUTPUT_LEN,
    trace: Optional[Path] = Opt(None, help="CSV or JSONL trace: arrival_s, input_tokens, output_tokens."),
    rate: Optional[float] = Opt(None, help="Mean arrivals per second (default: all at time 0, offline)."),
    arrival: Optional[str] = Opt(None, help="poisson or gamma."),
    burstiness: Optional[float] = Opt(None, help="Gamma shape (1 = Poisson, < 1 burstier)."),
    num_requests: Optional[int] = Opt(None, help="Requests to simulate."),
    concurrency: Optional[int] = Opt(None, help="Closed loop: keep this many requests in flight, each next one "
                                                "sent when one finishes (vllm bench serve --max-concurrency)."),
    ttft_slo: Optional[float] = Opt(None, help="Time-to-first-token objective, ms."),
    tpot_slo: Optional[float] = Opt(None, help="Time-per-output-token objective, ms."),
    seed: Optional[int] = Opt(None, help="Random seed of synthetic arrivals and lengths."),
    draft_model: Optional[str] = Opt(None, help="Speculative decoding: the draft model."),
    spec_tokens: Optional[int] = Opt(None, help="Speculative decoding: draft tokens per step."),
    acceptance_rate: Optional[float] = Opt(None, help="Speculative decoding: per-token acceptance probability."),
    spec_target: Optional[str] = Opt(None, help="Speculative decoding: where the target runs, gpu or cpu (Dovetail: "
                                                 "the draft on the GPU, the target on the CPU from host memory)."),
    prefill_replicas: Optional[int] = Opt(None, help="Disaggregation: prefill-only replicas."),
    decode_replicas: Optional[int] = Opt(None, help="Disaggregation: decode-only replicas."),
    node: Optional[str] = Opt(None, help="Catalog node (default: the GPU's usual node)."),
    offload_weights: Optional[str] = Opt(None, help="Stream weights from host memory or NVMe per layer: none, cpu, nvme."),
    streamed: Optional[str] = Opt(None, help="What is streamed: all weights, or only the routed experts (MoE)."),
    resident_fraction: Optional[float] = Opt(None, help="Share of the streamed weights (layers, or each layer's "
                                                         "most popular experts) kept on the GPU."),
    nvme_fraction: Optional[float] = Opt(None, help="With --offload-weights cpu: share of all weights on NVMe "
                                                    "instead of host DRAM (FlexGen's wd)."),
    offload_kv: Optional[str] = Opt(None, help="KV cache home: gpu, cpu or nvme."),
    kv_attention: Optional[str] = Opt(None, help="Where decode attention runs when the KV cache is off the GPU: "
                                                 "cpu (beside the cache) or gpu (the cache copied in)."),
    offload_micro_batches: Optional[int] = Opt(None, help="Micro-batches per offloaded iteration (CPU attention "
                                                           "overlaps GPU work across them)."),
    pageable: Optional[bool] = PAGEABLE,
    expert_popularity: Optional[str] = EXPERT_POPULARITY,
    zipf_exponent: Optional[float] = ZIPF_EXPONENT,
    routing_trace: Optional[Path] = ROUTING_TRACE,
    profile: Optional[Path] = PROFILE,
    trace_out: Optional[Path] = Opt(None, help="Write a Perfetto/Chrome trace of the simulation here."),
    requests_out: Optional[Path] = Opt(None, help="Write each request's arrival, first-token and finish times and "
                                                  "token counts here (CSV)."),
    plot: Optional[Path] = PLOT,
    emit: Optional[str] = EMIT_SERVE,
    emit_out: Optional[Path] = EMIT_OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Simulate a serving deployment: throughput, TTFT/TPOT/end-to-end percentiles, SLO goodput."""
    from sextant.serve.predict import run, summarise
    from sextant.spec.serving import parse_serve_scenario

    tree = scenario_tree(scenario, model, framework, gpu, node, profile)
    for key, value in (("weights", offload_weights), ("streamed", streamed), ("resident_fraction", resident_fraction),
                       ("nvme_fraction", nvme_fraction), ("kv_cache", offload_kv),
                       ("kv_attention", kv_attention), ("micro_batches", offload_micro_batches)):
        _put(tree, "offload", key, value)
    put_host_and_routing(tree, pageable, expert_popularity, zipf_exponent, routing_trace)
    for key, value in (("tp", tp), ("pp", pp), ("ep", ep), ("replicas", replicas), ("precision", precision),
                       ("kv_precision", kv_precision)):
        _put(tree, "deployment", key, value)
    for key, value in (("batching", batching), ("max_batch", max_batch), ("token_budget", token_budget),
                       ("kv_allocation", kv_allocation), ("preemption", preemption), ("router", router),
                       ("iteration_overhead_ms", iteration_overhead_ms)):
        _put(tree, "scheduler", key, value)
    for key, value in (("input_len", input_len), ("output_len", output_len), ("trace", str(trace) if trace else None),
                       ("rate", rate), ("arrival", arrival), ("burstiness", burstiness),
                       ("num_requests", num_requests), ("concurrency", concurrency), ("seed", seed)):
        _put(tree, "workload", key, value)
    _put(tree, "slo", "ttft_ms", ttft_slo)
    _put(tree, "slo", "tpot_ms", tpot_slo)
    _put_strategies(tree, draft_model, spec_tokens, acceptance_rate, spec_target, prefill_replicas, decode_replicas)
    put_gpus(tree, gpus)
    sc = parse_serve_scenario(tree, from_flags=scenario is None)
    _check_outputs(trace_out, requests_out, plot)
    check_emit(emit, emit_out, SERVE_FORMATS)
    launch = None
    if emit is not None:  # before the simulation: a deployment the engine cannot run fails fast

        launch = launch_for(sc, emit)
    console = Console(stderr=True)
    from sextant.serve.requests import request_count

    with _progress_bar(console, "simulating requests") as bar:
        task = bar.add_task("sim", total=None if sc.workload.trace else request_count(sc.workload))

        def tick(done: int, total: int) -> None:
            if done % 512 == 0 or done == total:
                bar.update(task, completed=done, total=total)

        res, reqs, out = run(sc, trace=trace_out is not None, progress=tick)
    result = summarise(res, reqs, out)
    if trace_out is not None:
        from sextant.serve.trace import write_trace

        write_trace(out, trace_out)
    if requests_out is not None:
        from sextant.serve.trace import write_requests

        write_requests(reqs, out, requests_out)
    if plot is not None:
        from sextant.plots import plot_serve
        from sextant.serve.predict import request_latencies

        plot_serve(result, *request_latencies(sc, reqs, out), plot)

    def render() -> None:
        _render(result, trace_out)
        if requests_out is not None:
            report_console().print(f"{len(reqs)} requests written to {requests_out}")

    finish(result, launch, emit_out, as_json, render)


def _check_outputs(trace_out: Path | None, requests_out: Path | None, plot: Path | None) -> None:
    """Refuse, before the simulation, an output file that cannot be written."""
    for target, flag in ((trace_out, "--trace-out"), (requests_out, "--requests-out")):
        if target is not None:
            check_output_path(target, field=flag)
    if plot is not None:
        from sextant.plots import check_plot_path

        check_plot_path(plot)


def _render(r, trace_out: Path | None) -> None:
    from sextant.cost.tiers import RESOURCE_LABELS

    console = report_console()
    console.print(f"[bold]{r.model}[/bold] on {r.gpus} x {r.gpu}: tp {r.tp} pp {r.pp}, {r.replicas} replica(s)"
                  + (f" ({r.prefill_replicas} prefill)" if r.prefill_replicas else "")
                  + f", {r.precision} weights, {r.kv_precision} KV, {r.batching} batching (max batch {r.max_batch}, "
                  f"{r.token_budget} tokens/iteration)")
    console.print(f"{r.num_requests} requests {'offline (all at t=0)' if r.offline else 'arriving over time'}; "
                  f"makespan {r.makespan_s:.2f} s")
    t = Table("", "mean", "p50", "p90", "p99", title="latency (ms)", title_justify="left")
    for name, p in (("TTFT", r.ttft_ms), ("TPOT", r.tpot_ms), ("end-to-end", r.e2e_ms)):
        t.add_row(name, f"{p.mean:.1f}", f"{p.p50:.1f}", f"{p.p90:.1f}", f"{p.p99:.1f}")
    console.print(t)
    console.print(f"throughput: {r.output_tokens_per_s:,.0f} output tokens/s ({r.output_tokens_per_s_per_gpu:,.0f} per GPU), "
                  f"{r.requests_per_s:.2f} requests/s")
    console.print(f"SLO attainment {r.slo_attainment:.1%}, goodput {r.goodput_requests_per_s:.2f} requests/s")
    console.print(f"KV cache: {r.kv_cache_capacity_tokens:,} tokens per engine, peak use {r.kv_cache_peak_fraction:.0%}"
                  f", {r.preemptions} preemption(s)")
    console.print("memory per GPU (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in r.memory_gb_per_gpu.items()))
    if r.binding_resource != "gpu" or r.memory_gb_per_tier["host"] or r.memory_gb_per_tier["nvme"]:
        console.print("memory per tier (GiB, per GPU): " + ", ".join(
            f"{k} {v:.1f} of {r.tier_capacity_gb[k]:.0f}" for k, v in r.memory_gb_per_tier.items()))
        console.print(f"bound by: {RESOURCE_LABELS.get(r.binding_resource, r.binding_resource)}; busy "
                      + ", ".join(f"{RESOURCE_LABELS.get(k, k)} {v:.1f} s" for k, v in r.resource_busy_s.items() if v))
    console.print(f"bottleneck: {r.bottleneck}")
    for a in r.assumptions:
        console.print(f"  assumes: {a}")
    if trace_out is not None:
        console.print(f"trace written to {trace_out} (open in https://ui.perfetto.dev)")
    if r.stages:
        t = Table("stage", "rate/s", "requests", "TTFT mean", "TTFT p99", "ITL mean", "e2e mean", "e2e p99",
                  title="per load stage (ms)", title_justify="left")
        for s in r.stages:
            t.add_row(str(s.stage), f"{s.rate:g}", str(s.requests), f"{s.ttft_ms.mean:.1f}", f"{s.ttft_ms.p99:.1f}",
                      f"{s.itl_mean_ms:.2f}", f"{s.e2e_ms.mean:.0f}", f"{s.e2e_ms.p99:.0f}")
        console.print(t)


def validate_serve_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the table."),
    ledger: Optional[Path] = Opt(None, help="Ledger YAML (default: the built-in serving ledger)."),
) -> None:
    """Simulate every published serving row of the ledger and report the error per row."""
    from sextant.validate.serve import validate_serving

    print_serve_report(validate_serving(ledger), "serving ledger", as_json)


def validate_serve_latency_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the tables."),
    ledger: Optional[Path] = Opt(None, help="Ledger YAML (default: the built-in serving-latency ledger)."),
    rows: Optional[str] = Opt(None, "--rows", help="Only these row ids, comma-separated (e.g. IS16,GS1)."),
) -> None:
    """Replay every published run of the serving-latency ledger (rates, stages, shared prompts,
    closed loops) and compare TTFT, ITL/TPOT and end-to-end latency per load stage."""
    from sextant.cli.render import listing, with_progress
    from sextant.validate.serve_latency import load_fit_record, validate_serving_latency

    ids = [r.strip() for r in rows.split(",") if r.strip()] if rows else None
    report = with_progress("replaying the serving-latency ledger", as_json,
                           lambda progress: validate_serving_latency(ledger, ids=ids, progress=progress))
    record = load_fit_record()
    if as_json:
        emit_json({**report.model_dump(), "cross_validation": record})
        return
    console = report_console()
    table = Table(title="serving latency: predicted vs measured, per load stage", title_justify="left")
    for col, justify in (("id", "left"), ("stage", "right"), ("model", "left"), ("gpu", "left"),
                         ("TTFT ms (mean, else median)", "right"), ("ITL/TPOT ms", "right"), ("e2e ms", "right"),
                         ("kept up", "left")):
        table.add_column(col, justify=justify)

    def cell(s, key: str) -> str:
        if key not in s.measured:
            return "-"
        text = f"{s.measured[key]:.4g} / {s.predicted[key]:.4g}"
        err = s.errors.get(key)
        if err is None:
            return text
        style = "red" if abs(err) > 0.25 else ("yellow" if abs(err) > 0.10 else "")
        return f"{text} [{style}]{err:+.0%}[/{style}]" if style else f"{text} {err:+.0%}"

    def first(s, *keys: str) -> str:
        return next((k for k in keys if k in s.measured), keys[0])

    for s in report.stages:
        decode = first(s, "itl_mean_ms", "tpot_mean_ms", "tpot_p99_ms")
        verdict = "yes" if s.kept_up else "no"
        if s.kept_up != s.simulated_kept_up:
            verdict += f" [red](simulated {'yes' if s.simulated_kept_up else 'no'})[/red]"
        table.add_row(s.id, str(s.stage), s.regime.get("model", ""), s.regime["gpu"],
                      cell(s, first(s, "ttft_mean_ms", "ttft_median_ms")), cell(s, decode),
                      cell(s, first(s, "e2e_mean_ms", "e2e_p99_ms")), verdict)
    console.print(table)
    summary = listing("errors by metric (stages that kept up; as shipped)", ("metric", "values", "median", "p90",
                                                                             "worst"), text={"metric", "worst"})
    for name, f in report.families.items():
        summary.add_row(name, str(f.rows), f"{f.median:.1%}", f"{f.p90:.1%}", f"{f.max_id} ({f.max:.0%})")
    console.print(summary)
    console.print(f"{report.rows} runs, {report.keep_up_stages} stages; kept up as measured in "
                  f"{report.keep_up_agreement}/{report.keep_up_stages}; latency over-predicted in "
                  f"{report.over_predicted:.0%} of values" + (f"; failed: {report.failed}" if report.failed else ""))
    if record:
        held = ", ".join(f"{k} {v['median']:.1%} (p90 {v['p90']:.1%})" for k, v in record["held_out"].items())
        console.print(f"leave-one-source-out ({record['parameter']} refitted without each source by "
                      f"scripts/fit_serving_latency.py): {held}")


def print_serve_report(report, title: str, as_json: bool) -> None:
    if as_json:
        emit_json(report.model_dump())
        return
    console = report_console()
    table = Table(title=f"{title}: predicted vs published", title_justify="left")
    for col, justify in (("id", "left"), ("model", "left"), ("gpu", "left"), ("gpus", "right"), ("metric", "left"),
                         ("published", "right"), ("predicted", "right"), ("error", "right")):
        table.add_column(col, justify=justify)
    for row in report.rows:
        err = row.predicted / row.published - 1
        style = "red" if row.ape > 0.25 else ("yellow" if row.ape > 0.10 else "")
        table.add_row(row.id, row.model, row.gpu, str(row.gpus), row.metric, f"{row.published:.4g}",
                      f"{row.predicted:.4g}", f"[{style}]{err:+.1%}[/{style}]" if style else f"{err:+.1%}")
    console.print(table)
    console.print(f"{len(report.rows)} rows: throughput median APE {report.throughput_median_ape:.1%} over "
                  f"{report.throughput_rows} rows, latency median APE {report.latency_median_ape:.1%} over "
                  f"{report.latency_rows} rows; max APE {report.max_ape:.1%} ({report.max_ape_id}); "
                  f"{report.rows_not_fitting} predicted not to run")
