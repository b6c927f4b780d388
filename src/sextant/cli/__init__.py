"""The ``sextant`` command line: parse, call the library, render. Only this package imports
Typer and Rich."""

from sextant.cli.app import app, main

__all__ = ["app", "main"]
