"""``sextant validate all``: every ledger in one run, one line each."""

from __future__ import annotations

import typer

from sextant.cli.output import emit_json
from sextant.cli.render import listing, report_console

Opt = typer.Option


def validate_all_cmd(
    as_json: bool = Opt(False, "--json", help="Print one JSON object instead of the summary."),
) -> None:
    """Run every built-in ledger (training, training offload, serving, serving latency, serving
    offload, planner rediscovery, measured sweeps, memory) and print one line per ledger: rows,
    median and worst error. Each ledger's own command (`sextant validate train`, ...) prints its
    rows."""
    reports = collect_reports(quiet=as_json)
    if as_json:
        emit_json({k: r.model_dump() for k, r in reports.items()})
        return
    report_console().print(summary_table(reports))


def collect_reports(quiet: bool = False) -> dict:
    """Every ledger's report, by the key ``validate all --json`` prints it under."""
    from sextant.cli.render import with_progress
    from sextant.validate.crossval import validate_training_cv
    from sextant.validate.kv_capacity import cross_validate_kv
    from sextant.validate.memory import validate_memory
    from sextant.validate.offload_ledger import validate_offload
    from sextant.validate.rediscover import rediscover
    from sextant.validate.serve import validate_serving
    from sextant.validate.serve_latency import validate_serving_latency
    from sextant.validate.sweep import validate_sweeps

    latency = with_progress("replaying the serving-latency ledger", quiet,
                            lambda progress: validate_serving_latency(progress=progress))
    return {
        "train": validate_training_cv(None),
        "offload (training)": validate_offload(None),
        "serve": validate_serving(None),
        "serve latency": latency,
        "offload (serving)": validate_serving(None, builtin="serving-offload.yaml"),
        "plan": rediscover(None),
        "sweep": validate_sweeps(None),
        "memory": validate_memory(None),
        "kv_capacity": cross_validate_kv(),
    }


def summary_table(reports: dict):
    """One line per ledger."""
    from sextant.validate.serve_latency import load_fit_record

    table = listing("every ledger: predicted vs published", ("ledger", "rows", "median error", "worst row", "command"),
                    text={"ledger", "worst row", "command"})
    for name in ("train", "offload (training)", "serve", "offload (serving)"):
        r = reports[name]
        command = "sextant validate " + ("offload" if name.startswith("offload") else name)
        cross_validation = getattr(r, "cross_validation", None)  # the serving reports have none
        if cross_validation is not None:
            h = cross_validation.held_out
            table.add_row(f"{name} (held out by source)", str(h.rows), f"{h.median:.1%}",
                          f"p90 {h.p90:.1%}, max {h.max:.1%}", command)
            name += " (in sample)"
        table.add_row(name, str(len(r.rows)), f"{r.median_ape:.1%}", f"{r.max_ape_id} ({r.max_ape:.1%})", command)
    latency, record = reports["serve latency"], load_fit_record()
    held = record.get("held_out", {})
    for family in ("itl", "e2e", "ttft", "throughput"):
        f = latency.families.get(family)
        if f is None:
            continue
        h = held.get(family)
        table.add_row(f"serve latency: {family} (as shipped)", str(f.rows), f"{f.median:.1%}",
                      f"{f.max_id} ({f.max:.0%})" + (f"; held out by source {h['median']:.1%}" if h else ""),
                      "sextant validate serve-latency")
    plan, sweeps, memory, kv = reports["plan"], reports["sweep"], reports["memory"], reports["kv_capacity"]
    n = len(plan.rows)
    table.add_row("plan (rediscovery)", str(n), "-", f"{plan.in_top_10_percent}/{n} in the top 10% "
                  f"({plan.chosen_in_top_10_percent}/{plan.chosen_rows} of the authors' choices, the rest baselines); "
                  f"best found as fast as published on {plan.best_at_least_as_fast}/{n}; measured pairs in the "
                  f"predicted order {plan.pairs_agreeing}/{len(plan.pairs)}", "sextant validate plan")
    table.add_row("sweep (ordering)", str(sweeps.points), f"{sweeps.median_ape:.1%}",
                  "rank correlation " + ", ".join(f"{s.id} {s.spearman:+.2f}" for s in sweeps.sweeps)
                  + f"; memory median error {sweeps.median_memory_ape:.0%}; out of memory {sweeps.oom_predicted} of "
                  f"{sweeps.oom_points} predicted",
                  "sextant validate sweep")
    m = memory.shipped
    table.add_row("memory (peak per GPU)", str(m.rows), f"{m.median:.1%}",
                  f"{m.max_id} ({m.max:.1%}); out of memory {memory.oom_predicted} of {memory.oom_runs} predicted",
                  "sextant validate memory")
    table.add_row("memory (KV-cache capacity)", str(len(kv.rows)), f"{kv.as_shipped.median:.1%}",
                  f"{kv.as_shipped.max_id} ({kv.as_shipped.max:.1%}); held out by source {kv.held_out.median:.1%}",
                  "sextant validate memory")
    return table
