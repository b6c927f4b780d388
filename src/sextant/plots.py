"""Pictures of results with matplotlib (an optional extra: ``pip install 'sextant-llm[plot]'``).

Each ``plot_*`` function draws one result into a PNG, SVG or PDF file (by the name's suffix) and
returns the numbers it drew, so that a test can hold the picture to the result it came from.
The pipeline schedule of a training step comes from sextant.train.pipeline_schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sextant.errors import SpecError
from sextant.files import check_output_path
from sextant.train.pipeline_schedule import step_schedule

#: File types a picture may be written as.
FORMATS = (".png", ".svg", ".pdf")


def check_plot_path(path: str | Path) -> Path:
    """Check, before any work, that the picture can be written and that matplotlib is there."""
    p = check_output_path(path, field="--plot")
    if p.suffix.lower() not in FORMATS:
        raise SpecError(f"{p.name}: a picture is written as {', '.join(FORMATS)} (by the file's suffix)",
                        field="--plot")
    _pyplot()
    return p


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SpecError("pictures need matplotlib: pip install 'sextant-llm[plot]'", field="--plot") from None
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    try:
        fig.savefig(path, bbox_inches="tight", dpi=120)
    except OSError as err:
        raise SpecError(f"cannot write {path}: {err.strerror or err}", field="--plot") from None
    finally:
        _pyplot().close(fig)


def plot_train(result, path: str | Path) -> dict[str, Any]:
    """Time and memory breakdown of one training step; with pipeline parallelism, the 1F1B
    schedule of the step's micro-batches on each stage (forward:backward as 1:2 of the predicted
    work per micro-batch, the backward carrying any recomputation)."""
    plt = _pyplot()
    times = {k: v for k, v in result.time_breakdown_s.items() if v > 0}
    memory = {k: v for k, v in result.memory_gb_per_gpu.items() if k != "total" and v > 0}
    pipelined = result.pp > 1
    fig, axes = plt.subplots(1, 3 if pipelined else 2, figsize=(17 if pipelined else 11, 4.5))
    axes[0].barh(list(times), [v * 1e3 for v in times.values()], color="tab:blue")
    axes[0].set_xlabel("ms per step")
    axes[0].set_title(f"step {result.step_time_s * 1e3:.0f} ms, MFU {result.mfu:.0%}")
    axes[1].barh(list(memory), list(memory.values()), color="tab:orange")
    axes[1].axvline(result.memory_capacity_gb, color="black", linestyle="--", label="capacity")
    axes[1].set_xlabel("GiB per GPU")
    axes[1].set_title(f"memory {result.memory_gb_per_gpu['total']:.1f} of {result.memory_capacity_gb:.0f} GiB")
    axes[1].legend(loc="lower right")
    data: dict[str, Any] = {"time_ms": {k: v * 1e3 for k, v in times.items()}, "memory_gib": memory}
    if pipelined:
        slots = step_schedule(result)
        for slot in slots:
            axes[2].barh(slot.stage, (slot.end - slot.start) * 1e3, left=slot.start * 1e3,
                         color="tab:green" if slot.kind == "F" else "tab:purple", edgecolor="white", linewidth=0.3)
        axes[2].set_yticks(range(result.pp))
        axes[2].invert_yaxis()
        axes[2].set_xlabel("ms (green forward, purple backward; gaps are the bubble)")
        axes[2].set_ylabel("pipeline stage")
        axes[2].set_title(f"1F1B, pp {result.pp}, {int(result.num_microbatches)} micro-batches")
        data["schedule"] = slots
    fig.suptitle(f"{result.model} on {result.gpus}x {result.gpu}: dp {result.dp} tp {result.tp} pp {result.pp}")
    _save(fig, path)
    return data


def plot_plan_train(plan, path: str | Path) -> dict[str, Any]:
    """Throughput of the best configuration at each GPU count, the Pareto front (no other count is
    both smaller and faster) marked."""
    plt = _pyplot()
    rows = [r for r in plan.by_gpu_count if r.best_tokens_per_s]
    gpus = [r.gpus for r in rows]
    speed = [r.best_tokens_per_s for r in rows]
    front = [r.on_pareto_front for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(gpus, speed, "o-", color="tab:blue", label="best at each count")
    ax.plot([g for g, f in zip(gpus, front) if f], [s for s, f in zip(speed, front) if f], "s", markersize=11,
            markerfacecolor="none", color="tab:red", label="Pareto front")
    if len(set(gpus)) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"{plan.model} on {plan.gpu}: best {plan.best.tokens_per_s:,.0f} tokens/s on {plan.best.gpus} GPUs")
    ax.legend()
    _save(fig, path)
    return {"gpus": gpus, "tokens_per_s": speed, "pareto": front}


def plot_serve(result, ttft_ms: np.ndarray, tpot_ms: np.ndarray, e2e_ms: np.ndarray, path: str | Path) -> dict:
    """Latency CDFs of a serving simulation: time to first token, time per output token and
    end to end, each request once."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    data = {}
    for ax, name, values in zip(axes, ("TTFT", "TPOT", "end to end"), (ttft_ms, tpot_ms, e2e_ms)):
        ordered = np.sort(np.asarray(values, float)[np.isfinite(values)])
        share = np.arange(1, len(ordered) + 1) / max(len(ordered), 1)
        ax.plot(ordered, share, color="tab:blue")
        for q in (0.5, 0.99):
            if len(ordered):
                ax.axvline(np.quantile(ordered, q), color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(f"{name}, ms")
        ax.set_ylabel("share of requests")
        ax.set_title(f"{name}: p50 {np.median(ordered):.1f} ms" if len(ordered) else name)
        data[name] = ordered
    fig.suptitle(f"{result.model} on {result.gpus}x {result.gpu}: {result.output_tokens_per_s:,.0f} output tokens/s")
    _save(fig, path)
    return data


def plot_plan_serve(plan, path: str | Path) -> dict[str, Any]:
    """A serving plan: output throughput of each placement's best batch (offline plan), or the
    GPUs and dollars each GPU type needs for the traffic (live-traffic plan)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if hasattr(plan, "strategies"):
        labels = [f"{e.strategy} b{e.policy.max_batch}" for e in plan.strategies]
        values = [e.output_tokens_per_s for e in plan.strategies]
        ax.barh(labels, values, color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("output tokens/s")
        ax.set_title(f"{plan.model} on {plan.gpu}: placements, fastest first")
    else:
        chosen = [e for e in plan.entries if e.meets_slo]
        labels = [f"{e.gpu} tp{e.tp}" + (f" pp{e.pp}" if e.pp > 1 else "") for e in chosen]
        values = [e.gpus for e in chosen]
        ax.barh(labels, values, color="tab:green")
        ax.invert_yaxis()
        ax.set_xlabel(f"GPUs for {plan.rate:g} requests/s")
        ax.set_title(f"{plan.model}: GPUs per layout that meet the objectives")
    _save(fig, path)
    return {"labels": labels, "values": values}
