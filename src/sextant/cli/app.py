"""Entry point and error handling: a user error is one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import json
import sys

import typer
from typer.exceptions import Abort, Exit, TyperException

from sextant.cli import device_cmds, emit, plan_cmds, plan_serve_cmds, serve_cmds, train_cmds, validate_cmds
from sextant.errors import SextantError

app = typer.Typer(
    name="sextant",
    help="Predict how large models train and serve on given hardware, before you rent it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from sextant import __version__

        typer.echo(f"sextant {__version__}")
        raise Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                       callback=_print_version, is_eager=True)) -> None:
    """Predict how large models train and serve on given hardware, before you rent it."""


predict_app = typer.Typer(help="Predict one configuration.", no_args_is_help=True)
validate_app = typer.Typer(help="Compare predictions with published measurements.", no_args_is_help=True)
plan_app = typer.Typer(help="Search for the best configuration.", no_args_is_help=True)
catalog_app = typer.Typer(help="List built-in GPUs, nodes, networks and models.", no_args_is_help=True)
app.add_typer(predict_app, name="predict")
app.add_typer(plan_app, name="plan")
app.add_typer(validate_app, name="validate")
app.add_typer(catalog_app, name="catalog")
predict_app.command("train")(train_cmds.predict_train_cmd)
predict_app.command("serve")(serve_cmds.predict_serve_cmd)
plan_app.command("train")(plan_cmds.plan_train_cmd)
plan_app.command("serve")(plan_serve_cmds.plan_serve_cmd)
validate_app.command("train")(train_cmds.validate_train_cmd)
validate_app.command("offload")(train_cmds.validate_offload_cmd)
validate_app.command("plan")(plan_cmds.validate_plan_cmd)
validate_app.command("sweep")(train_cmds.validate_sweep_cmd)
validate_app.command("memory")(train_cmds.validate_memory_cmd)
validate_app.command("serve")(serve_cmds.validate_serve_cmd)
validate_app.command("serve-latency")(serve_cmds.validate_serve_latency_cmd)
validate_app.command("all")(validate_cmds.validate_all_cmd)
catalog_app.command("list")(train_cmds.catalog_list_cmd)
app.command("export")(emit.export_cmd)
app.command("calibrate")(device_cmds.calibrate_cmd)
app.command("measure")(device_cmds.measure_cmd)


def _user_error(message: str, field: str | None, as_json: bool) -> int:
    """Report a user error: one line on stderr, or under ``--json`` one JSON object on stdout
    (``{"error": {"field": ..., "message": ...}}``) that a script can parse; exit code 2."""
    if as_json:
        print(json.dumps({"error": {"field": field, "message": message}}, allow_nan=False))
    else:
        print(f"error: {field}: {message}" if field else f"error: {message}", file=sys.stderr)
    return 2


@functools.lru_cache(maxsize=1)
def _command():
    """The click command tree, built once per process (building it costs ~15 ms, more than most
    commands that fail on their input; tests call :func:`main` thousands of times)."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 validation gate failed, 2 user error)."""
    command = _command()
    as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    try:
        rc = command.main(args=argv, prog_name="sextant", standalone_mode=False)
    except SextantError as err:
        return _user_error(Exception.__str__(err), err.field, as_json)
    except Exit as done:
        return done.exit_code
    except Abort:
        print("aborted", file=sys.stderr)
        return 130
    except TyperException as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # help was asked for by giving nothing
            print(err.format_message())
            return 0
        return _user_error(err.format_message(), None, as_json)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
