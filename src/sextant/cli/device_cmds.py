"""``calibrate`` and ``measure``: the commands that run PyTorch on the machine at hand."""

from __future__ import annotations

import importlib.util
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sextant.cli.output import emit_json
from sextant.cli.render import report_console
from sextant.errors import SpecError
from sextant.files import check_output_path

Opt = typer.Option


class DeviceChoice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class MeasureKind(str, Enum):
    train = "train"
    serve = "serve"


def _require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise SpecError("PyTorch is not installed; pip install 'sextant-llm[torch]' (CPU: pip install torch==2.13.0)",
                        field="device")


def calibrate_cmd(
    device: DeviceChoice = Opt(DeviceChoice.cpu, help="Device to calibrate."),
    quick: bool = Opt(False, "--quick", help="A small grid: under 2 minutes on a 2-core CPU."),
    out: Optional[Path] = Opt(None, help="Profile file to write (default: profiles/<device>.json)."),
    gpu: Optional[str] = Opt(None, help="Catalog GPU this CUDA device is (default: matched by its name)."),
    disk_dir: Optional[Path] = Opt(None, help="Directory for the disk benchmark (default: the temp dir)."),
    as_json: bool = Opt(False, "--json", help="Print the profile file to stdout as well."),
) -> None:
    """Run microbenchmarks (GEMMs, attention, memory, copies, disk, optimizer, all-reduce) and fit
    a hardware profile that `--profile` then feeds to predict, plan and measure."""
    _require_torch()
    from sextant.calibrate.runner import calibrate, check_profile_dir, default_output, write

    if out is not None:
        check_output_path(out, field="--out")
    else:
        check_profile_dir()
    console = Console(stderr=True)
    with Progress(TextColumn("calibrating {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=None)
        profile = calibrate(device.value, quick=quick, gpu=gpu, disk_dir=str(disk_dir) if disk_dir else None,
                            progress=lambda done, total, label: bar.update(task, completed=done, total=total,
                                                                           description=label))
    path = write(profile, str(out) if out else default_output(profile))
    if profile.trust is not None and not profile.trust.trusted:
        console.print(f"[yellow]warning:[/yellow] {path} is marked untrusted (predictions made with it say so): "
                      + "; ".join(profile.trust.problems))
    if as_json:
        typer.echo(profile.model_dump_json(indent=1))
        return
    p, m = profile.profile, profile.measured
    summary = Table(title=f"{p.name}  ->  {path}", title_justify="left", show_header=False)
    if profile.device is not None:
        for dtype, peak in profile.device.peak_flops.items():
            summary.add_row(f"fastest GEMM {dtype}", f"{peak / 1e12:.3f} TFLOP/s")
    curve = profile.fit["gemm_curve"]
    errors = (f" ± {curve['gemm_max_efficiency_stderr']:.3f}", f" ± {curve['gemm_half_dim_stderr']:.0f}") \
        if "gemm_half_dim_stderr" in curve else ("", "")  # profiles calibrated before the errors were kept
    summary.add_row("GEMM curve", f"max {p.gemm_max_efficiency:.3f}{errors[0]}, half-dim {p.gemm_half_dim:.0f}"
                                  f"{errors[1]} (R^2 {curve['r_squared']:.2f}; tables per dtype: "
                                  f"{', '.join(p.gemm_tables)})")
    summary.add_row("attention (SDPA) efficiency", f"{p.flash_attention_efficiency:.3f}")
    summary.add_row("memory bandwidth", f"{m['memory_bw_bytes_per_s'] / 1e9:.1f} GB/s; element-wise efficiency "
                                        f"{p.memory_bw_efficiency:.2f}, loss {p.loss_bw_efficiency:.2f}")
    summary.add_row("overheads", f"{p.kernel_overhead_s * 1e6:.1f} us per op, {p.layer_overhead_s * 1e6:.0f} us per layer")
    summary.add_row("AdamW", f"{p.optimizer_params_per_s / 1e6:.0f} M params/s on the device, "
                             f"{m['host_adam_params_per_s'] / 1e6:.0f} M params/s on the host CPU")
    summary.add_row("disk", f"read {m['disk_read_bytes_per_s'] / 1e9:.2f} GB/s, write {m['disk_write_bytes_per_s'] / 1e9:.2f} GB/s")
    ar = m["allreduce"]
    summary.add_row("all-reduce", f"{ar['backend']} x{ar['ranks']}: {ar['latency_s'] * 1e6:.0f} us + "
                                  f"{ar['bus_bw_bytes_per_s'] / 1e9:.2f} GB/s bus bandwidth")
    for key in ("h2d_pinned_bytes_per_s", "d2h_pinned_bytes_per_s", "h2d_pageable_bytes_per_s"):
        if key in m:
            summary.add_row(key.replace("_bytes_per_s", "").replace("_", " "), f"{m[key] / 1e9:.1f} GB/s")
    summary.add_row("took", f"{profile.provenance['duration_s']:.0f} s")
    if profile.trust is not None:
        summary.add_row("trusted", "yes" if profile.trust.trusted else "NO: " + "; ".join(profile.trust.problems))
    report_console().print(summary)


def measure_cmd(
    kind: MeasureKind = typer.Argument(..., help="train or serve"),
    device: DeviceChoice = Opt(DeviceChoice.cpu, help="Device to run on."),
    profile: Optional[Path] = Opt(None, help="Profile file (default for a CPU: profiles/<this cpu>.json)."),
    gpu: Optional[str] = Opt(None, help="Catalog GPU (CUDA without a profile file)."),
    batch: Optional[int] = Opt(None, help="Sequences per step."),
    seq_len: Optional[int] = Opt(None, help="Training sequence length, or the prompt length for serve."),
    output_len: Optional[int] = Opt(None, help="Tokens generated per sequence (serve)."),
    steps: int = Opt(5, help="Timed training steps (serve: timed rounds)."),
    as_json: bool = Opt(False, "--json", help="Print one JSON object."),
) -> None:
    """Run a small Llama-style model for real (training steps, or prefill + decode) and print
    the measured time and memory beside Sextant's prediction for the same configuration."""
    _require_torch()
    from sextant.measure.runner import measure_serve, measure_train

    for name, value in (("--batch", batch), ("--seq-len", seq_len), ("--output-len", output_len), ("--steps", steps)):
        if value is not None and value <= 0:
            raise SpecError(f"must be positive, got {value}", field=name)
    profile_path = str(profile) if profile else _default_profile(device.value, gpu)
    if kind is MeasureKind.train:
        result = measure_train(device.value, profile=profile_path, gpu=gpu, batch=batch, seq_len=seq_len, steps=steps)
    else:
        result = measure_serve(device.value, profile=profile_path, gpu=gpu, batch=batch, prompt_len=seq_len,
                               output_len=output_len, repeats=steps)
    if as_json:
        emit_json(result.model_dump())
        return
    render_measure(result, report_console())


def _default_profile(device: str, gpu: str | None) -> str | None:
    if device == "cuda":
        return None  # the catalog GPU's built-in profile
    from sextant.calibrate.runner import cpu_profile_path

    path = cpu_profile_path()
    if not Path(path).exists():
        raise SpecError(f"no profile for this CPU at {path}: run `sextant calibrate --device cpu` first, "
                        "or pass --profile", field="profile")
    return path


def render_measure(r, console: Console) -> None:
    step = "training step" if r.kind == "train" else "decode iteration"
    console.print(f"[bold]{r.model}[/bold] ({r.parameters / 1e6:.1f}M parameters, {r.precision}) on {r.device_name}, "
                  f"batch {r.batch} x {r.seq_len} tokens, {r.threads} threads, profile {r.profile}")
    table = Table(show_header=True)
    for col in ("", "measured", "predicted", "error"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row(step, f"{r.measured_step_time_s * 1e3:.2f} ms", f"{r.predicted_step_time_s * 1e3:.2f} ms", f"{r.error:+.1%}")
    if r.kind == "serve":
        e = r.extra
        table.add_row("prefill", f"{e['measured_prefill_s'] * 1e3:.2f} ms", f"{e['predicted_prefill_s'] * 1e3:.2f} ms",
                      f"{e['prefill_error']:+.1%}")
    table.add_row("peak memory", f"{r.measured_peak_memory_gb:.4f} GiB", f"{r.predicted_peak_memory_gb:.4f} GiB",
                  f"{r.memory_error:+.1%}")
    for part in r.measured_memory_gb:
        table.add_row(f"  {part}", f"{r.measured_memory_gb[part]:.4f} GiB",
                      f"{r.predicted_memory_gb.get(part, float('nan')):.4f} GiB", "")
    console.print(table)
    console.print("predicted time: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r.predicted_breakdown_s.items()))
    console.print(f"memory measured as: {r.memory_method}")
    for note in r.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
