"""``edgeslice slice``: find the critical neurons of a checkpoint and write the index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    BaselineName,
    BaselineOpt,
    CalibOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    IntervalOpt,
    JsonOpt,
    MetricName,
    MetricOpt,
    ModelArg,
    QuietOpt,
    RatioOpt,
    SeedOpt,
    SimilarityName,
    SimilarityOpt,
    SolverName,
    SolverOpt,
    StrategyName,
    StrategyOpt,
    ThetaOpt,
    console,
    emit_json,
    handle_errors,
    setup,
    table,
)
from ._training import WorkersOpt

CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint", exists=True, help="model.safetensors (with model.json beside it).")
]
EmitCHeaderOpt = Annotated[
    bool, typer.Option("--emit-c-header", help="Also write critical_index.h: the index as C bitset arrays.")
]
ClassBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--class-batch",
        min=1,
        help="Accepted for compatibility; no longer needed: calibration keeps one feature row per sample "
        "(samples x channels x 4 bytes) and forms each class's Gram matrix only while solving it.",
    ),
]


@handle_errors
def slice_command(
    model: ModelArg,
    checkpoint: CheckpointOpt,
    data: DataOpt = "fashion-mnist",
    metric: MetricOpt = MetricName.taylor,
    strategy: StrategyOpt = StrategyName.semantic,
    theta: ThetaOpt = 0.95,
    ratio: RatioOpt = 0.5,
    similarity: SimilarityOpt = SimilarityName.cka,
    baseline: BaselineOpt = BaselineName.zero,
    solver: SolverOpt = SolverName.exact,
    interval: IntervalOpt = 1,
    calib_per_class: CalibOpt = 100,
    classes: ClassesOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("edgeslice-out/slice"),
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    emit_c_header: EmitCHeaderOpt = False,
    class_batch: ClassBatchOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Slice MODEL: score channels per class on a calibration sample; write OUT/critical_index and a chart."""
    device = setup(json_out, device_type, seed, quiet)
    from edgeslice.pipeline.report import report_json
    from edgeslice.pipeline.slice import SliceRunConfig, run

    config = SliceRunConfig(
        model=model,
        checkpoint=checkpoint,
        data=data,
        metric=metric.value,
        strategy=strategy.value,
        theta=theta,
        ratio=ratio,
        similarity=similarity.value,
        baseline=baseline.value,
        solver=solver.value,
        interval=interval,
        calib_per_class=calib_per_class,
        classes=classes,
        out=out,
        download=download,
        seed=seed,
        emit_c_header=emit_c_header,
        class_batch=class_batch,
        workers=workers,
    )
    report = run(config, device)
    if json_out:
        emit_json(report_json(report))
        return
    rows = [[r["layer"], r["critical"], r["channels"], f"{r['critical'] / r['channels']:.0%}"] for r in report.layers]
    title = f"critical channels of {report.model} ({report.params})"
    console.print(table(title, ["layer", "critical", "total", "share"], rows))
    console.print(
        f"{report.critical_channels}/{report.total_channels} channels critical; index "
        f"{report.index_bytes} bytes → {report.index}"
    )
