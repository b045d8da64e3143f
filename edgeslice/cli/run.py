"""``edgeslice run``: the whole compression pipeline from a recipe (``recipes/*.toml``), with ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import (
    DeviceOpt,
    DeviceType,
    JsonOpt,
    QuietOpt,
    console,
    emit_json,
    handle_errors,
    setup,
    show_report,
    table,
)

if TYPE_CHECKING:
    from edgeslice.pipeline.run import RunReport

RecipeArg = Annotated[
    str | None,
    typer.Argument(help="A shipped recipe name (see --list) or a recipe .toml file.", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help='Override a recipe setting; the value is a TOML scalar (0.9, 3, true, "text"); dotted keys reach '
        "[slicing] and [pruning]. Repeatable: --set slicing.theta=0.9 --set finetune_epochs=2.",
    ),
]


@handle_errors
def run_command(
    recipe: RecipeArg = None,
    overrides: SetOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the recipe's seed.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: edgeslice-out/<recipe>).")] = None,
    emit_c_header: Annotated[
        bool, typer.Option("--emit-c-header", help="Also write critical_index.h (the index as a C header).")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="torch CPU threads (default: torch's choice). The bytes of the weights depend on it: fix it to "
            "repeat a run on a machine with another core count.",
        ),
    ] = None,
    list_recipes: Annotated[bool, typer.Option("--list", help="List the shipped recipes and exit.")] = False,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a RECIPE: compress as the recipe says, write the artifacts, recipe.effective.toml and manifest.json.

    Same recipe and seed → byte-identical index, checkpoint, ONNX and manifest (see docs/artifacts.md).
    """
    from edgeslice.pipeline.run import RunConfig, run

    if list_recipes:
        _print_recipes(json_out)
        return
    if recipe is None:
        raise typer.BadParameter("give a recipe name or file (edgeslice run --list shows the shipped ones)")
    config = RunConfig(
        recipe=recipe,
        overrides=tuple(overrides or []),
        seed=seed,
        out=out,
        emit_c_header=emit_c_header,
        threads=threads,
    )
    cfg = config.compress_config()  # a bad recipe or override fails before anything else
    device = setup(json_out, device_type, cfg.seed, quiet)
    report = run(config, device)
    if json_out:
        show_report(report, json_out, "")
        return
    _print_report(report)


def _print_recipes(json_out: bool) -> None:
    from edgeslice.pipeline.run import shipped_recipes

    rows = shipped_recipes()
    if json_out:
        emit_json(rows)
        return
    console.print(
        table(
            "shipped recipes (edgeslice run NAME)",
            ["recipe", "description"],
            [[r["name"], r["about"]] for r in rows],
        )
    )


def _print_report(report: RunReport) -> None:
    from .compress import print_report

    out = Path(report.out)
    print_report(report.compress, out, title_prefix=f"recipe {Path(report.recipe).stem}: ")
    console.print(f"recipe.effective.toml written; check the folder with: edgeslice verify {out}")
