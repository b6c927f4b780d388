"""``predict train``, ``validate train`` and ``catalog list``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sextant.cli.emit import EMIT_OUT, EMIT_TRAIN, check_emit, finish, launch_for
from sextant.cli.output import PLOT, emit_json
from sextant.cli.render import listing, report_console
from sextant.export import TRAIN_FORMATS
from sextant.files import check_output_path

# Typer needs Optional[...] on Python 3.10 for options that may be absent.
Opt = typer.Option


class RecomputeChoice(str, Enum):
    none = "none"
    selective = "selective"
    full = "full"


class PrecisionChoice(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    tf32 = "tf32"
    fp32 = "fp32"


class ScheduleChoice(str, Enum):
    gpipe = "gpipe"
    one_f_one_b = "1f1b"
    interleaved = "interleaved"


def _set(tree: dict[str, Any], section: str, key: str, value: Any) -> None:
    if value is not None:
        tree.setdefault(section, {})[key] = value.value if isinstance(value, Enum) else value


def predict_train_cmd(  # noqa: PLR0913 - the flags are the interface scripts call
    scenario: Optional[Path] = Opt(None, "--scenario", "-s", help="YAML scenario; flags override its values."),
    model: Optional[str] = Opt(None, help="Catalog model name or path to a HuggingFace config.json."),
    framework: Optional[str] = Opt(None, help="Framework preset, e.g. megatron-core-2024 (kernels, overlap)."),
    gpu: Optional[str] = Opt(None, help="Catalog GPU name (see `sextant catalog list gpus`)."),
    gpus: Optional[int] = Opt(None, help="Total number of GPUs."),
    gpus_per_node: Optional[int] = Opt(None, help="GPUs per node (default: the GPU's usual node)."),
    node: Optional[str] = Opt(None, help="Catalog node, instead of the GPU's usual one."),
    network: Optional[str] = Opt(None, help="Network port type, e.g. ib-ndr-400, roce-400, eth-100."),
    dp: Optional[int] = Opt(None, help="Data-parallel degree (default gpus / (tp*pp*cp))."),
    tp: Optional[int] = Opt(None, help="Tensor-parallel degree."),
    pp: Optional[int] = Opt(None, help="Pipeline-parallel degree."),
    cp: Optional[int] = Opt(None, help="Context-parallel degree."),
    ep: Optional[int] = Opt(None, help="Expert-parallel degree (MoE)."),
    etp: Optional[int] = Opt(None, help="Expert tensor parallelism (MoE; default tp). With etp < tp the expert "
                                        "layers fold onto the attention's ranks: ep may reach tp*cp*dp/etp."),
    vpp: Optional[int] = Opt(None, help="Virtual pipeline stages per rank (interleaved 1F1B)."),
    zero: Optional[int] = Opt(None, help="ZeRO stage 0-3 (3 = FSDP full shard)."),
    micro_batch: Optional[int] = Opt(None, help="Sequences per micro-batch."),
    global_batch: Optional[int] = Opt(None, help="Sequences per optimizer step."),
    seq_len: Optional[int] = Opt(None, help="Tokens per sequence."),
    recompute: Optional[RecomputeChoice] = Opt(None, help="Activation recomputation."),
    sequence_parallel: Optional[bool] = Opt(None, "--sequence-parallel/--no-sequence-parallel",
                                            help="Megatron sequence parallelism (needs tp > 1)."),
    precision: Optional[PrecisionChoice] = Opt(None, help="Training precision."),
    schedule: Optional[ScheduleChoice] = Opt(None, help="Pipeline schedule (default 1f1b, interleaved if vpp > 1)."),
    optimizer: Optional[str] = Opt(None, help="adamw, adam, sgd or adam8bit."),
    attention_kernel: Optional[str] = Opt(None, help="flash or unfused (materialized scores)."),
    dp_collective: Optional[str] = Opt(None, help="hierarchical (NCCL over all NICs) or flat_ring (one NIC bounds)."),
    dropout: Optional[bool] = Opt(None, "--dropout/--no-dropout", help="Dropout on attention and residuals."),
    nics_per_node: Optional[int] = Opt(None, help="Network ports per node."),
    expert_imbalance: Optional[float] = Opt(None, help="MoE: busiest expert rank's tokens over the mean (>= 1)."),
    offload_optimizer: Optional[str] = Opt(None, help="Optimizer state and update: none, cpu (ZeRO-Offload), "
                                            "nvme (ZeRO-Infinity) or interleaved (Deep Optimizer States)."),
    offload_params: Optional[str] = Opt(None, help="16-bit parameters: none, cpu or nvme (needs --zero 3)."),
    offload_activations: Optional[str] = Opt(None, help="Saved activations: none, cpu or nvme."),
    method: Optional[str] = Opt(None, help="full, lora, qlora, galore or zo (zeroth-order, MeZO/ZO2)."),
    adapter_rank: Optional[int] = Opt(None, help="LoRA/QLoRA adapter rank, GaLore projection rank (default 64)."),
    trace_out: Optional[Path] = Opt(None, help="Write the offload timeline as a Perfetto/Chrome trace (JSON)."),
    profile: Optional[Path] = Opt(None, help="Hardware profile JSON (default: the built-in one)."),
    plot: Optional[Path] = PLOT,
    emit: Optional[str] = EMIT_TRAIN,
    emit_out: Optional[Path] = EMIT_OUT,
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the report."),
) -> None:
    """Predict step time, throughput, MFU and memory of one training configuration.

    With no arguments: the built-in default scenario (src/sextant/scenarios/default-train.yaml),
    Llama 3.1 8B on one 8x H100 node; flags override any of its values.
    """
    from sextant.spec.scenario import base_tree, parse_scenario
    from sextant.train.predict import predict_train

    tree: dict[str, Any] = base_tree(scenario, model, gpu)
    if model is not None:
        tree["model"] = model
    if framework is not None:
        tree["framework"] = framework
    for key, value in (("gpu", gpu), ("gpus", gpus), ("gpus_per_node", gpus_per_node), ("node", node),
                       ("network", network), ("nics_per_node", nics_per_node),
                       ("profile", str(profile) if profile else None)):
        _set(tree, "hardware", key, value)
    for key, value in (("dp", dp), ("tp", tp), ("pp", pp), ("cp", cp), ("ep", ep), ("etp", etp), ("vpp", vpp),
                       ("zero", zero),
                       ("micro_batch", micro_batch), ("recompute", recompute),
                       ("sequence_parallel", sequence_parallel), ("precision", precision), ("schedule", schedule),
                       ("attention_kernel", attention_kernel), ("dp_collective", dp_collective),
                       ("offload_optimizer", offload_optimizer), ("offload_params", offload_params),
                       ("offload_activations", offload_activations)):
        _set(tree, "strategy", key, value)
    for key, value in (("global_batch", global_batch), ("seq_len", seq_len), ("optimizer", optimizer),
                       ("dropout", dropout), ("expert_imbalance", expert_imbalance), ("method", method),
                       ("adapter_rank", adapter_rank)):
        _set(tree, "workload", key, value)
    if trace_out is not None:
        check_output_path(trace_out, field="--trace-out")
    if plot is not None:
        from sextant.plots import check_plot_path

        check_plot_path(plot)
    check_emit(emit, emit_out, TRAIN_FORMATS)
    parsed = parse_scenario(tree, source="options", from_flags=scenario is None)
    result = predict_train(parsed, trace_out=str(trace_out) if trace_out else None)
    if plot is not None:
        from sextant.plots import plot_train

        plot_train(result, plot)
    launch = None
    if emit is not None:

        launch = launch_for(parsed, emit)
    from sextant.cli.render import render_train

    finish(result, launch, emit_out, as_json, lambda: render_train(result, report_console()))


def validate_train_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the table."),
    ledger: Optional[Path] = Opt(None, help="Ledger YAML (default: the built-in training ledger)."),
) -> None:
    """Predict every published run of the training ledger and report the error per row, in sample
    and leave-one-source-out (each source's rows predicted by the profile and preset values fitted
    without that source)."""
    from sextant.cli.render import with_progress
    from sextant.validate.crossval import validate_training_cv

    report = with_progress("cross-validating, one fold per source", as_json,
                           lambda progress: validate_training_cv(ledger, progress=progress))
    _print_report(report, "training ledger", as_json)
    if not as_json:
        print_cross_validation(report.cross_validation)


def print_cross_validation(cv) -> None:
    """The leave-one-source-out summary and its table by regime, held out first."""
    console = report_console()
    h, i = cv.held_out, cv.in_sample
    console.print(f"leave-one-source-out over {h.rows} rows from {len(cv.sources)} sources: median APE {h.median:.1%}, "
                  f"p90 {h.p90:.1%}, max {h.max:.1%} (in sample: {i.median:.1%}, {i.p90:.1%}, {i.max:.1%})")
    table = listing("error by regime, held out by source (in sample)",
                    ("regime", "value", "rows", "median", "p90", "max"), text={"regime", "value"})
    for g in cv.regimes:
        table.add_row(g.regime, g.value, str(g.held_out.rows),
                      *(f"{getattr(g.held_out, k):.1%} ({getattr(g.in_sample, k):.1%})" for k in ("median", "p90", "max")))
    console.print(table)
    cov = cv.interval_coverage
    if cov is not None:
        console.print(f"{cov.level:.0%} prediction intervals (split-conformal, by regime) cover {cov.covered}/{cov.rows} "
                      f"rows ({cov.fraction:.0%}) when each source's interval comes from the other sources' residuals")


def validate_offload_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the tables."),
    ledger: Optional[Path] = Opt(None, help="Training-offload ledger YAML (default: the built-in one)."),
    serve_ledger: Optional[Path] = Opt(None, help="Serving-offload ledger YAML (default: the built-in one)."),
) -> None:
    """Predict the offloading ledgers. Training (ZeRO-Offload, ZeRO-Infinity, QLoRA, ZO2):
    throughputs, "fits on this GPU" claims (fits: 1) and GPU counts needed without offloading.
    Serving (ZeRO-Inference, DeepSpeed-Inference): weights streamed from host memory or NVMe."""
    from sextant.cli.serve_cmds import print_serve_report
    from sextant.validate.offload_ledger import validate_offload
    from sextant.validate.serve import validate_serving

    training = validate_offload(ledger)
    serving = validate_serving(serve_ledger, builtin="serving-offload.yaml")
    if as_json:
        emit_json({"training": training.model_dump(), "serving": serving.model_dump()})
        return
    _print_report(training, "training offload ledger", False)
    print_serve_report(serving, "serving offload ledger", False)


def _print_report(report, title: str, as_json: bool) -> None:
    if as_json:
        emit_json(report.model_dump())
        return
    console = report_console()
    table = Table(title=f"{title}: predicted vs published", title_justify="left")
    for col, justify in (("id", "left"), ("model", "left"), ("gpus", "right"), ("metric", "left"),
                         ("published", "right"), ("predicted", "right"), ("error", "right"), ("fits", "left")):
        table.add_column(col, justify=justify)
    for row in report.rows:
        err = row.predicted / row.published - 1
        style = "red" if row.ape > 0.25 else ("yellow" if row.ape > 0.10 else "")
        table.add_row(row.id, row.model, str(row.gpus), row.metric, f"{row.published:.4g}", f"{row.predicted:.4g}",
                      f"[{style}]{err:+.1%}[/{style}]" if style else f"{err:+.1%}", "yes" if row.fits else "[red]no[/red]")
    console.print(table)
    for row in report.rows:
        if row.chosen:
            knobs = ", ".join(f"{k} {v}" for k, v in row.chosen.items())
            console.print(f"{row.id}: knobs the source leaves open, searched; predicted with the best that fits: {knobs}")
    console.print(f"{len(report.rows)} rows: median APE {report.median_ape:.1%}, max APE {report.max_ape:.1%} "
                  f"({report.max_ape_id}); {report.rows_not_fitting} predicted not to fit")
    if report.pairs:
        pairs = listing("pairs measured on one setup: speed-up of the second over the first",
                        ("first", "second", "measured", "predicted", "ratio error", "order"), text={"first", "second", "order"})
        for p in report.pairs:
            pairs.add_row(p.first, p.second, f"{p.measured_speedup:.3f}", f"{p.predicted_speedup:.3f}",
                          f"{p.ratio_error:+.1%}", "agrees" if p.agrees else "[red]reversed[/red]")
        console.print(pairs)


def catalog_list_cmd(kind: str = typer.Argument(..., help="gpus, nodes, networks, models or prices")) -> None:
    """List catalog entries with their key figures and sources."""
    from sextant import catalog
    from sextant.errors import SpecError

    console = Console(width=max(report_console().width, 200))  # names must survive a pipe to grep
    if kind == "gpus":
        table = Table("name", "bf16 TFLOP/s", "fp8 TFLOP/s", "memory GiB", "HBM GB/s", "link GB/s/dir", "TDP W", "source")
        for name in catalog.gpu_names():
            g = catalog.get_gpu(name)
            table.add_row(name, f"{g.peak('fp16') / 1e12:.0f}",
                          f"{g.peak_flops['fp8'] / 1e12:.0f}" if "fp8" in g.peak_flops else "-",
                          f"{g.memory.capacity_bytes / 2**30:.0f}", f"{g.memory.read_bytes_per_s / 1e9:.0f}",
                          f"{g.intra_node_link.bandwidth_bytes_per_s / 1e9:.0f}" if g.intra_node_link else "PCIe",
                          f"{g.tdp_w:.0f}", g.source)
    elif kind == "nodes":
        table = Table("name", "GPU", "GPUs", "intra-node", "NICs", "host GiB", "source")
        for name in catalog.node_names():
            n = catalog.get_node(name)
            table.add_row(name, n.gpu, str(n.gpus_per_node), n.intra_node_link.name,
                          f"{n.nics_per_node}x {n.nic.name}", f"{n.host_memory.capacity_bytes / 2**30:.0f}", n.source)
    elif kind == "networks":
        table = Table("name", "kind", "Gb/s", "latency us", "source")
        for name in catalog.network_names():
            link = catalog.get_network(name)
            table.add_row(name, link.kind, f"{link.bandwidth_bytes_per_s * 8 / 1e9:.0f}", f"{link.latency_s * 1e6:.0f}",
                          link.source)
    elif kind == "models":
        from sextant.cost.params import count_params

        table = Table("name", "params (B)", "active (B)", "layers", "hidden", "heads/kv", "source")
        for name in catalog.model_names():
            m = catalog.get_model(name)
            counts = count_params(m)
            table.add_row(name, f"{counts.total / 1e9:.2f}", f"{counts.active / 1e9:.2f}", str(m.num_layers),
                          str(m.hidden_size), f"{m.num_heads}/{m.num_kv_heads}", m.source)
    elif kind == "prices":
        from sextant.catalog.prices import gpu_price, priced_gpus

        table = Table("GPU", "$/GPU-hour", "provider", "offering", "as of", "source")
        for name in priced_gpus():
            p = gpu_price(name)
            table.add_row(name, f"{p.dollars_per_gpu_hour:,.2f}", p.provider, p.offering, p.as_of, p.source)
    else:
        raise SpecError(f"unknown catalog '{kind}'; use gpus, nodes, networks, models or prices", field="kind")
    console.print(table)


def validate_sweep_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the tables."),
    ledger: Optional[Path] = Opt(None, help="Sweep ledger YAML (default: the built-in one)."),
) -> None:
    """Sweeps: several configurations of one model measured on one cluster by one team. Per sweep,
    each point's error, and whether the predictions order the points as they ran (Spearman), pick
    the fastest (regret) and know which ran out of memory."""
    from sextant.cli.render import listing
    from sextant.validate.sweep import validate_sweeps

    report = validate_sweeps(ledger)
    if as_json:
        emit_json(report.model_dump())
        return
    console = report_console()
    for s in report.sweeps:
        table = listing(f"{s.id}: {s.source}", ("configuration", "batch", "measured s", "predicted s", "error",
                                                "measured GiB", "predicted GiB"), {"configuration"})
        for p in s.points:
            measured = "OOM" if p.measured_oom else f"{p.measured_step_time_s:.2f}"
            predicted_mem = f"{p.predicted_memory_gib:.1f}" + ("" if p.predicted_fits else " (no fit)")
            table.add_row(p.config, str(p.global_batch), measured, f"{p.predicted_step_time_s:.2f}",
                          "-" if p.error is None else f"{p.error:+.1%}",
                          "-" if p.measured_memory_gib is None else f"{p.measured_memory_gib:g}", predicted_mem)
        console.print(table)
        memory = "" if s.median_memory_ape is None else f"; memory median error {s.median_memory_ape:.1%}"
        console.print(f"rank correlation (Spearman) {s.spearman:+.2f}; median error {s.median_ape:.1%}; predicted "
                      f"fastest {s.predicted_best}, measured fastest {s.measured_best} (regret {s.regret:.1%}); "
                      f"out of memory: {s.oom_predicted} of {s.oom_points} predicted, "
                      f"{s.ran_predicted_not_to_fit} that ran predicted not to fit{memory}\n")
    memory = "" if report.median_memory_ape is None else f", memory median error {report.median_memory_ape:.1%}"
    console.print(f"{len(report.sweeps)} sweeps, {report.points} points: median error {report.median_ape:.1%}, "
                  f"median rank correlation {report.median_spearman:+.2f}{memory}; out of memory: "
                  f"{report.oom_predicted} of {report.oom_points} predicted")


def validate_memory_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the table."),
    ledger: Optional[Path] = Opt(None, help="Memory ledger YAML (default: the built-in one)."),
    sweeps: bool = Opt(True, "--sweeps/--no-sweeps", help="Also score the sweep ledger's nvidia-smi readings."),
) -> None:
    """Predict the peak GPU memory of every measured run (the memory ledger and the sweeps'
    nvidia-smi readings), each for the counter its source reports: allocated, reserved or device."""
    from sextant.cli.render import with_progress
    from sextant.validate.memory import validate_memory

    report = with_progress("predicting the memory ledger", as_json,
                           lambda progress: validate_memory(ledger, with_sweeps=sweeps, progress=progress))
    from sextant.validate.kv_capacity import cross_validate_kv

    kv = cross_validate_kv()
    if as_json:
        emit_json({**report.model_dump(), "kv_capacity": kv.model_dump()})
        return
    console = report_console()
    table = listing("memory ledger: peak GiB per GPU, measured vs predicted",
                    ("id", "source", "counter", "measured", "predicted", "error", "fits"), text={"id", "source", "counter", "fits"})
    for r in report.rows:
        measured = "out of memory" if r.oom else f"{r.measured_gib:.1f}"
        err = "" if r.error is None else f"{r.error:+.1%}"
        verdict = ("yes" if r.predicted_fits else "no") + (" (right)" if r.predicted_fits != r.oom else " (wrong)")
        table.add_row(r.id, r.group, r.counter, measured, f"{r.predicted_gib:.1f}", err, verdict)
    console.print(table)
    s = report.shipped
    console.print(f"as predict train reports it (nothing fitted on these rows): {s.rows} measured peaks from "
                  f"{len(report.by_group)} sources, median error {s.median:.1%}, p90 {s.p90:.1%}, max {s.max:.1%} ({s.max_id})")
    for group, g in report.by_group.items():
        console.print(f"  {group}: {g.rows} rows, median {g.median:.1%}, p90 {g.p90:.1%}, max {g.max:.1%} ({g.max_id})")
    console.print(f"runs that ran out of memory predicted not to fit: {report.oom_predicted} of {report.oom_runs}; "
                  f"runs that ran predicted to fit: {report.ran_predicted_to_fit} of {report.ran_runs}")
    kv_table = listing("KV-cache capacity: tokens the engine allocated at startup, logged vs predicted",
                       ("id", "source", "engine", "logged", "predicted", "error", "held out"),
                       text={"id", "source", "engine"})
    for r in kv.rows:
        kv_table.add_row(r.id, r.group, r.framework, f"{r.measured_tokens:,}", f"{r.predicted_tokens:,}",
                         f"{r.error:+.1%}", f"{r.held_out_error:+.1%}")
    console.print(kv_table)
    k, kh = kv.as_shipped, kv.held_out
    console.print(f"KV capacity of {k.rows} engine logs: median error {k.median:.1%}, p90 {k.p90:.1%}, "
                  f"max {k.max:.1%} ({k.max_id}) as the presets ship; leave-one-source-out median "
                  f"{kh.median:.1%}, p90 {kh.p90:.1%}, max {kh.max:.1%} ({kh.max_id})")
    p, h, i = report.parameters, report.fitted_held_out, report.fitted_in_sample
    console.print(f"diagnostic, not adopted: fragmentation {p.fragmentation:.1%} and runtime {p.runtime_gib:.1f} GiB fitted "
                  f"on all rows give median {i.median:.1%} (p90 {i.p90:.1%}) in sample, {h.median:.1%} (p90 {h.p90:.1%}) "
                  "leave-one-source-out")
