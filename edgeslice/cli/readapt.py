"""``edgeslice readapt``: repair a model against adversarial inputs by training only its critical channels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import (
    AttackName,
    DataOpt,
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    JsonOpt,
    ModelArg,
    OptimizerName,
    QuietOpt,
    SeedOpt,
    console,
    emit_json,
    handle_errors,
    positive,
    setup,
    table,
)

if TYPE_CHECKING:
    from edgeslice.pipeline.readapt import ReadaptReport


@handle_errors
def readapt_command(
    model: ModelArg,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", exists=True, help="model.safetensors (with model.json beside it).")
    ],
    index: Annotated[
        Path, typer.Option("--index", exists=True, dir_okay=False, help="critical_index sliced from this checkpoint.")
    ],
    data: DataOpt = "fashion-mnist",
    attack: Annotated[AttackName, typer.Option("--attack", help="Attack the repair targets.")] = AttackName.fgsm,
    eps: Annotated[
        float,
        typer.Option("--eps", callback=positive, help="L∞ budget on [0,1] pixels (0.1: our Fashion-MNIST default)."),
    ] = 0.1,
    alpha: Annotated[float | None, typer.Option("--alpha", help="PGD step size (default: eps/4).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="PGD steps.")] = 10,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the repair set.")] = 5,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Adversarial samples the repair targets.")] = 1000,
    eval_samples: Annotated[
        int, typer.Option("--eval-samples", min=1, help="Held-out test images for RAA and the PGD-20 re-attack.")
    ] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clean/adversarial pairs per step.")] = 50,
    lr: Annotated[float, typer.Option("--lr", callback=positive, help="Peak learning rate (cosine decay).")] = 1e-3,
    optimizer: Annotated[OptimizerName, typer.Option("--optimizer")] = OptimizerName.adamw,
    train_classifier: Annotated[
        bool, typer.Option("--train-classifier/--freeze-classifier", help="Train the classifier rows too.")
    ] = True,
    regenerate: Annotated[
        bool, typer.Option("--regenerate", help="Fresh adversarial examples against the current model each epoch.")
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("edgeslice-out/readapt"),
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Repair MODEL (paper Eq. 6-7): train only the index's critical channels on clean + adversarial samples.

    Writes OUT/model.safetensors + model.json (the repaired checkpoint), report.json (TPR, RA, RAA, PGD-20 and clean
    accuracy before/after, attack settings) and manifest.json. Every other parameter stays bit-identical.
    """
    device = setup(json_out, device_type, seed, quiet)
    from edgeslice.pipeline.readapt import ReadaptConfig, run
    from edgeslice.pipeline.report import report_json

    config = ReadaptConfig(
        model=model,
        checkpoint=checkpoint,
        index=index,
        data=data,
        attack=attack.value,
        eps=eps,
        alpha=alpha,
        steps=steps,
        epochs=epochs,
        samples=samples,
        eval_samples=eval_samples,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer.value,
        train_classifier=train_classifier,
        regenerate=regenerate,
        out=out,
        download=download,
        seed=seed,
    )
    report = run(config, device)
    if json_out:
        emit_json(report_json(report))
        return
    _show(report)


def _show(report: ReadaptReport) -> None:
    """The before/after table of a repair."""
    a = report.attack
    console.print(
        table(
            f"re-adapted {report.model} against {a['kind'].upper()} ε={a['eps']:g}"
            + (f" (α={a['alpha']:g}, {a['steps']} steps)" if a["kind"] == "pgd" else ""),
            ["metric", "before", "after"],
            [
                ["TPR (trained parameters)", "", f"{report.tpr:.2%}"],
                ["RA (repair set, adversarial)", f"{report.ra_before:.2f}%", f"{report.ra:.2f}%"],
                ["RAA (fresh attack, held-out)", f"{report.raa_before:.2f}%", f"{report.raa:.2f}%"],
                [
                    f"PGD-{report.config['reattack_steps']} re-attack",
                    f"{report.pgd20_before:.2f}%",
                    f"{report.pgd20:.2f}%",
                ],
                ["clean test accuracy", f"{report.clean_before:.2f}%", f"{report.clean_after:.2f}%"],
            ],
        )
    )
    console.print(f"trained in {report.train_seconds:.1f} s; frozen rows bit-identical → {report.out}")
