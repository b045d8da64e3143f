"""``edgeslice prune``: iterative unstructured pruning (LAMP / Global / Uniform+ / ERK) of any checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import (
    DataOpt,
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    JsonOpt,
    ModelArg,
    PrunerName,
    QuietOpt,
    SeedOpt,
    console,
    err_console,
    fmt_bytes,
    handle_errors,
    positive,
    setup,
    show_report,
    table,
)

if TYPE_CHECKING:
    from edgeslice.pipeline.prune import PruneReport


def _open_unit(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise typer.BadParameter(f"must be in (0, 1), got {value}")
    return value


CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint", exists=True, help="model.safetensors (with model.json beside it), dense or not.")
]
PrunerOpt = Annotated[PrunerName, typer.Option("--pruner", help="Layer-wise sparsity allocation.")]
PruneStepOpt = Annotated[
    float,
    typer.Option("--prune-step", callback=_open_unit, help="Share of the remaining weights removed per iteration."),
]
MaxIterationsOpt = Annotated[int, typer.Option("--max-iterations", min=1, help="Upper bound on iterations.")]
MaxAccDropOpt = Annotated[
    float, typer.Option("--max-acc-drop", min=0.0, help="Accepted accuracy drop below the dense baseline, in points.")
]
FinetuneStepsOpt = Annotated[
    int, typer.Option("--finetune-steps", min=0, help="Fine-tuning steps after each pruning step.")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Fine-tuning batch size.")]
LrOpt = Annotated[float, typer.Option("--lr", callback=positive, help="Peak fine-tuning learning rate.")]
DenseParamsOpt = Annotated[
    int | None,
    typer.Option(
        "--dense-params",
        min=1,
        help="Parameters of the original dense model (CR denominator) (default: from the checkpoint).",
    ),
]
BaselineAccuracyOpt = Annotated[
    float | None,
    typer.Option(
        "--baseline-accuracy",
        help="Dense accuracy the budget is measured against (default: the checkpoint's recorded dense "
        "accuracy, else its measured accuracy).",
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run with the same settings and --out.")
]


@handle_errors
def prune_command(
    model: ModelArg,
    checkpoint: CheckpointOpt,
    pruner: PrunerOpt = PrunerName.lamp,
    data: DataOpt = "fashion-mnist",
    prune_step: PruneStepOpt = 0.2,
    max_iterations: MaxIterationsOpt = 10,
    max_acc_drop: MaxAccDropOpt = 1.0,
    finetune_steps: FinetuneStepsOpt = 200,
    batch_size: BatchSizeOpt = 256,
    lr: LrOpt = 1e-3,
    dense_params: DenseParamsOpt = None,
    baseline_accuracy: BaselineAccuracyOpt = None,
    out: OutOpt = Path("edgeslice-out/prune"),
    resume: ResumeOpt = False,
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Prune MODEL iteratively: remove --prune-step of the weights, fine-tune, test; stop before the accuracy drop
    exceeds --max-acc-drop. Writes model.onnx, model.safetensors + model.json, report.json, manifest.json and
    accuracy_vs_cr.png to --out (all or nothing). The state is saved after each iteration: --resume continues.
    """
    device = setup(json_out, device_type, seed, quiet)
    from edgeslice.pipeline.prune import PruneConfig, run

    config = PruneConfig(
        model=model,
        checkpoint=checkpoint,
        pruner=pruner.value,
        data=data,
        prune_step=prune_step,
        max_iterations=max_iterations,
        max_acc_drop=max_acc_drop,
        finetune_steps=finetune_steps,
        batch_size=batch_size,
        lr=lr,
        dense_params=dense_params,
        baseline_accuracy=baseline_accuracy,
        out=out,
        resume=resume,
        download=download,
        seed=seed,
    )
    report = run(config, device, on_iteration=None if json_out else _show_iteration)
    if json_out:
        show_report(report, json_out, "")
        return
    _print_report(report)


def _show_iteration(entry: dict) -> None:
    err_console.print(
        f"iteration {entry['iteration']}: sparsity {entry['prunable_sparsity']:.1%}, "
        f"CR {entry['compression_rate']:.1%}, accuracy {entry['accuracy']:.2f}%"
        + ("" if entry["kept"] else " — over budget, rolled back"),
        highlight=False,
    )


def _print_report(report: PruneReport) -> None:
    """The per-iteration table, the summary and the notes of a prune run (human output)."""
    cfg, dense, out = report.config, report.dense_params, report.out
    rows = [
        [
            "start",
            f"{report.start['prunable_sparsity']:.1%}",
            f"{report.start['compression_rate']:.1%}",
            f"{report.start['nonzero_params']:,}",
            f"{report.start['accuracy']:.2f}",
            "",
        ]
    ]
    for h in report.history:
        rows.append(
            [
                str(h["iteration"]),
                f"{h['prunable_sparsity']:.1%}",
                f"{h['compression_rate']:.1%}",
                f"{h['nonzero_params']:,}",
                f"{h['accuracy']:.2f}",
                "kept" if h["kept"] else "rolled back",
            ]
        )
    console.print(
        table(
            f"{report.model} on {report.data_name}: {cfg['pruner']}, step {cfg['prune_step']:g}, "
            f"budget {cfg['max_acc_drop']:g} points below {report.baseline_accuracy:.2f}%",
            ["iteration", "weight sparsity", "CR", "non-zero params", "accuracy (%)", ""],
            rows,
        )
    )
    o = report.onnx or {}
    summary = [
        ["CR (vs dense model)", f"{report.compression_rate:.2%}"],
        ["NI (iterations run)", f"{report.iterations} ({report.iterations_kept} kept; stop: {report.stop_reason})"],
        ["MA (test accuracy, %)", f"{report.accuracy:.2f}"],
        ["non-zero parameters", f"{report.nonzero_params:,} of {report.params:,} (dense model: {dense:,})"],
        ["ONNX size / gzip", f"{fmt_bytes(o['raw_bytes'])} / {fmt_bytes(o['gzip_bytes'])}"],
        *(
            [
                f"onnxruntime latency, {r['threads']} thread(s), batch 1, {r['input_shape'][-1]} px (ms)",
                f"{r['median_ms']:.3f}",
            ]
            for r in (o.get("latency_device"), o.get("latency"))
            if r and "threads" in r
        ),
        ["ONNX parity max |Δ|", f"{o['parity_max_abs']:.2e}"],
        ["wall time (s)", f"{report.wall_s:.1f}"],
    ]
    console.print(table("result", ["", "value"], summary))
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"artifacts in {out}: model.onnx, model.safetensors, model.json, report.json, manifest.json, accuracy_vs_cr.png"
    )
