"""``edgeslice increment``: learn new classes without forgetting, as the device would (paper §4.3, Eq. 8–9).

The learning itself is :func:`edgeslice.ondevice.learn_increment` (torch, timm, safetensors only); this host-side
command adds what a device cannot: the ONNX export with its onnxruntime parity check, and (when the new data also
holds old classes' test items) an evaluation of forgetting that the device itself never sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import (
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    JsonOpt,
    OptimizerName,
    QuietOpt,
    SeedOpt,
    console,
    emit_json,
    fmt_bytes,
    handle_errors,
    positive,
    setup,
    table,
    unit_interval,
)

if TYPE_CHECKING:
    from edgeslice.pipeline.increment import IncrementReport


BundleDirOpt = Annotated[
    Path | None,
    typer.Argument(
        metavar="[BUNDLE]",
        help="The folder compress (or an earlier increment) wrote: its model.safetensors and critical_index.",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", exists=True, help="The deployed model.safetensors (model.json beside it)."),
]
IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", exists=True, dir_okay=False, help="critical_index sliced from this checkpoint."),
]
NewDataOpt = Annotated[
    str,
    typer.Option(
        "--new-data",
        help="Data of the new classes: a data-set name or an ImageFolder directory (NEW/train/<class>/; one "
        "class folder of at least 5 images is enough).",
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="New classes (names or labels of --new-data, comma-separated; default: the "
        "data's classes the model lacks).",
    ),
]
CalibPerClassOpt = Annotated[
    int, typer.Option("--calib-per-class", min=1, help="Images per new class for slicing the new classes.")
]
ReplayOpt = Annotated[
    str | None,
    typer.Option("--replay", help="Old-class data to replay (name or folder); its classes are matched by name."),
]
ReplayFractionOpt = Annotated[
    float, typer.Option("--replay-fraction", callback=unit_interval, help="Share of --replay kept per class.")
]
IsolateOpt = Annotated[
    bool,
    typer.Option(
        "--isolate/--no-isolate",
        help="First cut the frozen channels and old class rows off the trainable ones (and freeze what they "
        "cannot do without), so old-class logits stay exactly the same; proven on a probe, else exit 1. "
        "Costs the critical channels their non-critical inputs once: use a high-θ index (0.99).",
    ),
]
HeadOpt = Annotated[
    str,
    typer.Option(
        "--head",
        help="auto (default): routed when the index's class statistics are over isolated features, else lda "
        "(else trained when the index has no statistics, or with --replay/--isolate). "
        "routed: class-incremental, one argmax over all classes: train the new rows and "
        "non-critical channels isolated from the old ones, then a router from the index's class statistics "
        "picks the task and that task's rows pick the class. lda: nothing trains, the classifier becomes the "
        "linear discriminant of the class statistics. trained: isolated or plain training without the router "
        "(task-incremental).",
    ),
]


@handle_errors
def increment_command(
    bundle_dir: BundleDirOpt = None,
    checkpoint: CheckpointOpt = None,
    index: IndexOpt = None,
    new_data: NewDataOpt = "",
    classes: ClassesOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("edgeslice-out/increment"),
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the new data.")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option("--lr", callback=positive, help="Peak learning rate (cosine decay).")] = 3e-3,
    optimizer: Annotated[OptimizerName, typer.Option("--optimizer")] = OptimizerName.adamw,
    calib_per_class: CalibPerClassOpt = 50,
    replay: ReplayOpt = None,
    replay_fraction: ReplayFractionOpt = 0.1,
    isolate: IsolateOpt = False,
    head: HeadOpt = "auto",
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn new classes: by default (--head auto: routed where the index allows) class-incremental, one argmax
    over old and new classes: grow the classifier, train only non-critical channels isolated from the critical ones
    (old-class logits stay exact), and route each input to a task with the index's class statistics; --head lda
    trains nothing, --head trained skips the router (task-incremental). Slice the new classes, and write
    OUT/model.safetensors + model.json, critical_index, model.onnx (parity-checked with onnxruntime), report.json
    and manifest.json; from a BUNDLE, a bundle again."""
    device = setup(json_out, device_type, seed, quiet)
    from edgeslice.pipeline.increment import IncrementConfig, run
    from edgeslice.pipeline.report import report_json

    config = IncrementConfig(
        new_data=new_data,
        bundle_dir=bundle_dir,
        checkpoint=checkpoint,
        index=index,
        classes=classes,
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer.value,
        calib_per_class=calib_per_class,
        replay=replay,
        replay_fraction=replay_fraction,
        isolate=isolate,
        head=head,
        download=download,
        seed=seed,
    )
    report = run(config, device)
    if json_out:
        emit_json(report_json(report))
        return
    _show(report)


def _show(report: IncrementReport) -> None:
    """The accuracy table of an increment and one line on how it was learned and what the device keeps."""
    timm_name = report.model
    rows = [
        [k, f"{v['class_il']:.2f}%", f"{v['task_il']:.2f}%"]
        for k, v in report.evaluation.items()
        if isinstance(v, dict)
    ]
    console.print(
        table(f"{timm_name} + {', '.join(report.new_classes)}", ["test accuracy", "class-IL", "task-IL"], rows)
    )
    tr, stats, kept = report.training, report.class_stats or {}, report.bytes_kept
    console.print(
        (
            f"class-incremental head from class statistics ({fmt_bytes(stats['bytes'])}, "
            f"rank {stats['rank']}, {stats['features']} frozen features)"
            if report.head == "lda"
            else f"trained with {report.frozen_channels}/{report.total_channels} channels frozen"
            + (
                f", routed over tasks {report.tasks} by class statistics ({fmt_bytes(stats['bytes'])})"
                if report.head == "routed"
                else ""
            )
        )
        + (
            f" (isolated: {report.isolation['cut_weights']} weights cut, "
            f"{report.isolation['closure_added_channels']} channels added)"
            if report.isolation
            else ""
        )
        + "; "
        f"{tr['step_ms_median']:.1f} ms/step, peak RSS {fmt_bytes(tr['peak_rss_bytes'])}; device kept "
        f"index {fmt_bytes(kept['index'])}"
        + (f" + replay {fmt_bytes(kept['replay_buffer'])}" if kept["replay_fraction"] is not None else "")
        + f"; ONNX parity {report.onnx_parity_max_abs:.2g} → {report.out}"
    )
