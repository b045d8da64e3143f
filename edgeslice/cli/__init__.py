"""The ``edgeslice`` command line (Typer)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeslice import __version__

from .compress import compress_command
from .devices import app as devices_app
from .evaluate import evaluate_command
from .increment import increment_command
from .prune import prune_command
from .readapt import readapt_command
from .run import run_command
from .slice import slice_command
from .train import train_command
from .verify import verify_command

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Semantic slicing (NeuSemSlice) for edge models: slice, restructure, re-adapt, grow, ship.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeslice {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Semantic slicing (NeuSemSlice) for edge models."""


app.command("train")(train_command)
app.command("slice")(slice_command)
app.command("compress")(compress_command)
app.add_typer(devices_app, name="devices")
app.command("evaluate-slices")(evaluate_command)
app.command("prune")(prune_command)
app.command("readapt")(readapt_command)
app.command("increment")(increment_command)
app.command("run")(run_command)
app.command("verify")(verify_command)


def main() -> None:
    app()


__all__ = ["app", "main"]
