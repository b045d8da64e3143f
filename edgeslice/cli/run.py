"""``edgeslice run``: the whole compression pipeline from a recipe (``recipes/*.toml``), with ``--set`` overrides."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import (
    DeviceOpt,
    DeviceType,
    JsonOpt,
    QuietOpt,
    claim_out,
    console,
    emit_json,
    handle_errors,
    setup,
    table,
)

if TYPE_CHECKING:
    import torch

    from edgeslice.pipeline import CompressConfig
    from edgeslice.pipeline.results import CompressReport

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
    from edgeslice.pipeline import recipes

    if list_recipes:
        _print_recipes(json_out)
        return
    if recipe is None:
        raise typer.BadParameter("give a recipe name or file (edgeslice run --list shows the shipped ones)")
    path = recipes.find_recipe(recipe)
    cfg = recipes.load_recipe(path, [*(overrides or []), *([f"seed={seed}"] if seed is not None else [])])
    device = setup(json_out, device_type, cfg.seed, quiet)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    out = claim_out(out or Path("edgeslice-out") / path.stem)
    report = run_recipe(cfg, out, device, name=path.stem, overrides=overrides or [], emit_c_header=emit_c_header)
    if json_out:
        from edgeslice.pipeline.report import report_json

        emit_json({**report_json(report), "out": str(out), "recipe": str(path)})
        return
    _print_report(report, path.stem, out)


def run_recipe(
    cfg: CompressConfig,
    out: Path,
    device: torch.device,
    *,
    name: str,
    overrides: list[str],
    emit_c_header: bool = False,
) -> CompressReport:
    """``compress`` into a staging folder, add ``recipe.effective.toml`` (and the C header), rewrite the manifest.

    Everything lands in ``out`` only when all of it succeeded.

    Args:
        cfg: the effective configuration.
        out: the output folder.
        device: where torch runs.
        name: the recipe's name, recorded in the effective recipe's header comment with the overrides.
        overrides: the ``--set`` items as given.
        emit_c_header: also write ``critical_index.h``.

    Returns:
        The compress report.
    """
    from edgeslice.artifacts.files import atomic_write_bytes
    from edgeslice.artifacts.manifest import read_manifest, write_manifest
    from edgeslice.artifacts.staging import staging_dir
    from edgeslice.pipeline import compress
    from edgeslice.pipeline.recipes import EFFECTIVE_NAME, config_from_dict, config_to_toml

    with staging_dir(out) as stage:
        report = compress(cfg, stage, device)
        # What compress ran, as its manifest says: with a device, θ and the precision chosen by the budget search.
        effective = read_manifest(stage)["config"]
        effective = config_from_dict(effective).to_dict()  # fields in declaration order, as in a hand-written recipe
        command = shlex.join(["edgeslice", "run", name, *(a for o in overrides for a in ("--set", o))])
        header = f"Effective configuration written by `{command}` (a recipe: `edgeslice run` loads it again)."
        if effective != cfg.to_dict():
            header += f"\nθ and quantize as chosen by the budget search for device {cfg.device!r}."
        atomic_write_bytes(stage / EFFECTIVE_NAME, config_to_toml(effective, header=header).encode())
        if emit_c_header:
            from edgeslice.deploy.cheader import write_c_header
            from edgeslice.index import CriticalIndex

            write_c_header(CriticalIndex.load(stage / "critical_index"), stage / "critical_index.h")
        write_manifest(stage, effective, cfg.seed)
    return report


def _print_recipes(json_out: bool) -> None:
    from edgeslice.pipeline.recipes import find_recipe, list_recipes, load_recipe, read_recipe

    rows = []
    for name in list_recipes():
        path = find_recipe(name)
        cfg = load_recipe(path)
        description = read_recipe(path)[1].get("description", "")
        rows.append({"name": name, "path": str(path), "model": cfg.model, "device": cfg.device, "about": description})
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


def _print_report(report: CompressReport, name: str, out: Path) -> None:
    from .compress import print_report

    print_report(report, out, title_prefix=f"recipe {name}: ")
    console.print(f"recipe.effective.toml written; check the folder with: edgeslice verify {out}")
