"""Rich rendering of results for people. JSON output bypasses this module."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from sextant.train.result import TrainResult

T = TypeVar("T")


def _bar(fraction: float, width: int = 24) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "█" * filled + "·" * (width - filled)


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    return f"{seconds * 1e3:.2f} ms"


#: Width of a report written to a pipe or a file, where no terminal wraps lines (Rich would
#: assume 80 columns there and squeeze the tables).
PIPE_WIDTH = 120


def report_console() -> Console:
    """The console reports go to: the terminal's width, or :data:`PIPE_WIDTH` when standard output
    is a pipe or a file and ``COLUMNS`` does not say otherwise."""
    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=PIPE_WIDTH)


def listing(title: str, columns: Iterable[str], text: Iterable[str] = ()) -> Table:
    """A table of many rows, readable in a pipe and in a narrow terminal: a rule under the header
    and no vertical lines; columns named in ``text`` are left-aligned, the others (numbers) right.
    Any cell may wrap, and a word longer than its column folds onto the next line: when the
    terminal is too narrow for the whole table, cells wrap rather than lose characters."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1, 0, 0))
    left = set(text)
    for name in columns:
        table.add_column(name, justify="left" if name in left else "right", overflow="fold")
    return table


def render_train(result: TrainResult, console: Console) -> None:
    from sextant.train.result import MEMORY_PART_LABELS, TIME_PART_LABELS

    r = result
    title = (f"{r.model} on {r.gpus}x {r.gpu}: dp={r.dp} tp={r.tp} pp={r.pp} cp={r.cp} ep={r.ep}"
             f"{f' etp={r.etp}' if r.etp != r.tp else ''}{f' vpp={r.vpp}' if r.vpp > 1 else ''} zero={r.zero}")
    console.print(Text(title, style="bold"))
    console.print(
        f"micro-batch {r.micro_batch} x {r.num_microbatches:g} per step, global batch {r.global_batch} "
        f"x {r.seq_len} tokens, recompute {r.recompute}, sequence parallel "
        f"{'on' if r.sequence_parallel else 'off'}, {r.schedule}, {r.precision}, profile {r.profile}"
        + ("" if r.profile_fitted else " (not fitted to this GPU's runs)")
    )
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="cyan")
    summary.add_column(justify="right")
    summary.add_row("step time", _duration(r.step_time_s))
    summary.add_row("throughput", f"{r.tokens_per_s:,.0f} tokens/s ({r.tokens_per_s_per_gpu:,.0f} per GPU)")
    if r.interval:
        step, tps = r.interval["step_time_s"], r.interval["tokens_per_s_per_gpu"]
        summary.add_row(f"{step['level']:.0%} interval", f"step {_duration(step['low'])} to {_duration(step['high'])}; "
                        f"{tps['low']:,.0f} to {tps['high']:,.0f} tokens/s per GPU")
    summary.add_row("model TFLOP/s per GPU", f"{r.model_tflops_per_gpu:.1f}")
    summary.add_row("MFU / HFU", f"{r.mfu:.1%} / {r.hfu:.1%}")
    summary.add_row("executed TFLOP/s per GPU", f"{r.executed_tflops_per_gpu:.1f} ({r.hardware_utilization:.1%} of peak)")
    colour = "green" if r.memory_upper_gb <= r.memory_capacity_gb else ("yellow" if r.fits else "red")
    total = r.memory_gb_per_gpu["total"]
    shown = (f"{r.memory_required_gb:.1f} of {r.memory_capacity_gb:.0f} GiB needed ({total:.1f} as nvidia-smi shows it "
             "with memory to spare)" if abs(total - r.memory_required_gb) >= 0.05 else
             f"{total:.1f} of {r.memory_capacity_gb:.0f} GiB")
    summary.add_row("memory per GPU", f"{shown}: [{colour}]{r.fits_statement}[/{colour}]")
    summary.add_row("bottleneck", r.bottleneck)
    summary.add_row("bound by", r.binding_resource)
    if r.tier_capacity_gb.get("host") is not None:
        cap = r.tier_capacity_gb
        summary.add_row("offload", f"optimizer {r.offload_optimizer}, parameters {r.offload_params}, "
                                   f"activations {r.offload_activations}")
        summary.add_row("memory per tier", f"host {r.memory_gb_per_tier['host']:.1f} of {cap['host']:.0f} GiB, "
                                           f"NVMe {r.memory_gb_per_tier['nvme']:.1f} of {cap['nvme']:.0f} GiB (per GPU)")
        busy = ", ".join(f"{k} {v:.2f} s" for k, v in r.resource_busy_s.items() if v > 0)
        summary.add_row("busy per resource", busy)
    if r.method != "full":
        summary.add_row("method", r.method)
    console.print(summary)

    times = Table(title="where the step time goes", title_justify="left")
    times.add_column("part")
    times.add_column("time", justify="right")
    times.add_column("share", justify="right")
    times.add_column("")
    for key, value in sorted(r.time_breakdown_s.items(), key=lambda kv: kv[1], reverse=True):
        if value <= 0:
            continue
        share = value / r.step_time_s
        times.add_row(TIME_PART_LABELS[key], _duration(value), f"{share:.1%}", _bar(share))
    console.print(times)

    mem = Table(title="memory per GPU (GiB), on the stage that needs the most", title_justify="left")
    mem.add_column("part")
    mem.add_column("GiB", justify="right")
    mem.add_column("")
    cap = r.memory_capacity_gb
    for key, label in MEMORY_PART_LABELS.items():
        value = r.memory_gb_per_gpu[key]
        if value > 0:
            mem.add_row(label, f"{value:.2f}", _bar(value / cap))
    mem.add_row("[bold]total[/bold]", f"[bold]{r.memory_gb_per_gpu['total']:.2f}[/bold]", f"capacity {cap:.0f}")
    console.print(mem)
    console.print(Text("FLOPs: " + r.flop_convention, style="dim"))
    for line in r.assumptions:
        console.print(Text("assumes " + line, style="dim"))


def with_progress(label: str, quiet: bool, work: Callable[[Callable[[int, int], None]], T]) -> T:
    """``work(progress)`` under a progress bar on stderr (:func:`search_progress`), ``progress``
    taking (done, total)."""
    with search_progress(Console(stderr=True), label, quiet) as bar:
        task = bar.add_task(label, total=None)
        return work(lambda done, total: bar.update(task, completed=done, total=total))


def search_progress(console: Console, label: str, quiet: bool) -> Progress:
    """The progress bar of a search, on stderr; off for ``--json`` and when stderr is not a
    terminal (a bar in a log or a pipe is noise)."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console,
                    transient=True, disable=quiet or not console.is_terminal)
