"""``--emit FORMAT`` on predict and plan, and ``sextant export``: the answer as a launch script."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from sextant.cli.output import emit_json
from sextant.export import PRESETS, SERVE_FORMATS, TRAIN_FORMATS

EMIT_TRAIN = typer.Option(None, "--emit", help=f"Also write the launch of this configuration: {', '.join(TRAIN_FORMATS)}.")
EMIT_SERVE = typer.Option(None, "--emit", help=f"Also write the launch of this deployment: {', '.join(SERVE_FORMATS)}.")
EMIT_OUT = typer.Option(None, "--emit-out", help="Write the launch script to this file (default: print it after "
                                                 "the report).")


def check_emit(fmt: str | None, out: Path | None, formats: tuple[str, ...]) -> None:
    """Refuse, before any work, an unknown format or an unwritable ``--emit-out``."""
    from sextant.errors import SpecError
    from sextant.files import check_output_path

    if fmt is None:
        if out is not None:
            raise SpecError("--emit-out writes the launch that --emit asks for: give --emit FORMAT", field="emit-out")
        return
    if fmt not in formats:
        other = SERVE_FORMATS if formats == TRAIN_FORMATS else TRAIN_FORMATS
        hint = f" ({fmt} is a {'serving' if fmt in SERVE_FORMATS else 'training'} format)" if fmt in other else ""
        raise SpecError(f"'{fmt}' is not one of {', '.join(formats)}{hint}", field="emit")
    if out is not None:
        check_output_path(out, field="--emit-out")


def finish(result: Any, launch, out: Path | None, as_json: bool, render) -> None:
    """Print the result (``render`` it, or its JSON with a ``launch`` key) and the launch."""
    if as_json:
        emit_json({**result.model_dump(), **({"launch": launch.model_dump()} if launch is not None else {})})
        if launch is not None and out is not None:
            _write(launch, out)
        return
    render()
    if launch is None:
        return
    if out is not None:
        _write(launch, out)
        typer.echo(f"\n{launch.framework} launch written to {out} (bash {out})")
    else:
        typer.echo(f"\n# --- {launch.framework} launch ---")
        typer.echo(launch.script(), nl=False)


def launch_for(scenario, fmt: str, *, planned: bool = False):
    """The ``--emit`` launch of ``scenario`` (training or serving, by ``fmt``); a refusal names
    ``--emit``, and for a plan's choice the preset that searches what the framework runs."""
    from sextant.export import export_serve, export_train
    from sextant.export.launch import ExportError

    try:
        return export_train(scenario, fmt) if fmt in TRAIN_FORMATS else export_serve(scenario, fmt)
    except ExportError as err:
        err.field = "emit"
        if planned and fmt in TRAIN_FORMATS and scenario.framework != PRESETS[fmt]:
            err.args = (f"{err.args[0]} (the plan's best configuration); plan with --framework "
                        f"{PRESETS[fmt]} to search what it runs",)
        raise


def _write(launch, out: Path) -> None:
    from sextant.files import write_atomic

    write_atomic(out, launch.script(), field="--emit-out")


def export_cmd(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=f"Training: {', '.join(TRAIN_FORMATS)}; serving: "
                                                          f"{', '.join(SERVE_FORMATS)}."),
    scenario: Optional[Path] = typer.Option(None, "--scenario", "-s", help="Training or serving scenario YAML "
                                                                           "(default: the built-in training "
                                                                           "scenario, or a default serving one)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the launch script to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the launch as one JSON object."),
) -> None:
    """Write the launch of a scenario for a framework: Megatron-LM arguments, a torchtitan command,
    a DeepSpeed config, or vLLM, SGLang or TensorRT-LLM serve commands, as a bash script."""
    from sextant.errors import SpecError
    from sextant.export import export_serve, export_train

    if fmt not in TRAIN_FORMATS + SERVE_FORMATS:
        raise SpecError(f"'{fmt}' is not a format; choose {', '.join(TRAIN_FORMATS + SERVE_FORMATS)}", field="format")
    if out is not None:
        from sextant.files import check_output_path

        check_output_path(out, field="--out")
    kind = "training" if fmt in TRAIN_FORMATS else "serving"
    try:
        if fmt in TRAIN_FORMATS:
            from sextant.spec.scenario import base_tree, parse_scenario

            parsed = parse_scenario(base_tree(scenario, None, None), source=str(scenario or "default"))
        else:
            from sextant.spec.serving import ServeScenario, load_serve_scenario

            parsed = load_serve_scenario(scenario) if scenario else ServeScenario()
    except SpecError as err:
        raise SpecError(f"{Exception.__str__(err)} ({fmt} exports a {kind} scenario)", field=err.field) from None
    launch = export_train(parsed, fmt) if fmt in TRAIN_FORMATS else export_serve(parsed, fmt)
    if as_json:
        emit_json(launch.model_dump())
    elif out is None:
        typer.echo(launch.script(), nl=False)
    if out is not None:
        _write(launch, out)
        if not as_json:
            typer.echo(f"{launch.framework} launch written to {out} (bash {out})")
