"""``edgeslice verify``: re-check an artifact folder (hashes, checkpoint, ONNX parity, index, device budgets)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import JsonOpt, QuietOpt, console, err_console, handle_errors, show_report

if TYPE_CHECKING:
    from edgeslice.pipeline.verify import VerifyReport

_STYLE = {"ok": "[green]ok[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


class Runtime(str, Enum):
    """Which runtime runs the ONNX checks."""

    onnxruntime = "onnxruntime"
    openvino = "openvino"


@handle_errors
def verify_command(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Artifact folder with manifest.json.")],
    runtime: Annotated[
        Runtime,
        typer.Option(
            "--runtime",
            help="Runtime for the ONNX checks. openvino (needs `pip install 'edgeslice[openvino]'`) runs model.onnx "
            "and model.int8.onnx in f32 (INFERENCE_PRECISION_HINT=f32, not the bf16 some CPUs default to) against "
            "the same PyTorch reference outputs.",
        ),
    ] = Runtime.onnxruntime,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Verify FOLDER: every file against manifest.json, the checkpoint, ONNX parity, the index, device budgets.

    Exit code 0 when every check passes, 1 when any fails (a missing, extra or changed file fails).
    """
    from rich.markup import escape

    from edgeslice._progress import set_enabled
    from edgeslice.pipeline.verify import VerifyConfig, run

    set_enabled(not quiet)
    report = run(VerifyConfig(folder=folder, runtime=runtime.value))
    if json_out:
        show_report(report, json_out, "")
    else:
        _print_report(report, folder)
    if not report.ok:
        failed = report.failed
        names = f"{failed[0].name}: {failed[0].detail}" if len(failed) == 1 else ", ".join(c.name for c in failed)
        err_console.print(f"[bold red]error:[/] verification failed: {escape(names)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if not json_out:
        console.print(f"all checks passed: {folder}", soft_wrap=True, highlight=False)


def _print_report(report: VerifyReport, folder: Path) -> None:
    """The checks as a table, and the OpenVINO precision line when it ran (human output)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"verify {folder}", title_justify="left")
    for col in ("check", "status", "detail"):
        t.add_column(col)
    for c in report.checks:
        t.add_row(escape(c.name), _STYLE[c.status], escape(c.detail))
    console.print(t)
    rt = report.runtime
    if rt.get("name") == "openvino" and "precision" in rt:
        line = (
            f"runtime: {rt['runtime']} on {rt['device']}, precision {rt['precision']} ({rt['forced']}; this CPU's "
            f"default: {rt['cpu_default_precision']}): {rt['why']}"
        )
        console.print(escape(line), soft_wrap=True, highlight=False)
