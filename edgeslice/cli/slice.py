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
    claim_out,
    console,
    emit_json,
    handle_errors,
    setup,
    table,
)
from ._training import WorkersOpt


@handle_errors
def slice_command(
    model: ModelArg,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", exists=True, help="model.safetensors (with model.json beside it).")
    ],
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
    emit_c_header: Annotated[
        bool, typer.Option("--emit-c-header", help="Also write critical_index.h: the index as C bitset arrays.")
    ] = False,
    class_batch: Annotated[
        int | None,
        typer.Option(
            "--class-batch",
            min=1,
            help="Accepted for compatibility; no longer needed: calibration keeps one feature row per sample "
            "(samples x channels x 4 bytes) and forms each class's Gram matrix only while solving it.",
        ),
    ] = None,
    workers: WorkersOpt = None,
) -> None:
    """Slice MODEL: score channels per class on a calibration sample; write OUT/critical_index and a chart."""
    device = setup(json_out, device_type, seed, quiet)
    claim_out(out)
    from edgeslice.artifacts.files import atomic_write_json
    from edgeslice.artifacts.staging import staging_dir
    from edgeslice.models import load_checkpoint, resolve_model_name
    from edgeslice.pipeline import (
        SliceConfig,
        check_against_data,
        layer_table,
        load_checkpoint_data,
        plot_layer_ratios,
        slice_model,
    )

    cfg = SliceConfig(
        metric=metric.value,
        strategy=strategy.value,
        theta=theta,
        ratio=ratio,
        similarity=similarity.value,
        calib_per_class=calib_per_class,
        baseline=baseline.value,
        solver=solver.value,
        interval=interval,
    )
    net, meta = load_checkpoint(checkpoint, expect_model=resolve_model_name(model))
    from edgeslice.classes import select_classes

    bundle = load_checkpoint_data(meta, data, seed=seed, download=download, workers=workers)
    bundle = select_classes(bundle, classes, min_classes=2)
    check_against_data(meta, bundle)
    _, result, index = slice_model(net.to(device), meta, bundle, cfg, seed=seed, device=device, class_batch=class_batch)
    rows = layer_table(result)
    with staging_dir(out, config=cfg.to_dict(), seed=seed) as stage:
        index.save(stage / "critical_index")
        if emit_c_header:
            from edgeslice.deploy.cheader import write_c_header

            write_c_header(index, stage / "critical_index.h")
        plot_layer_ratios(rows, stage / "critical_ratio.png", f"{meta.timm_name}: critical channels per layer")
        summary = {
            "model": meta.timm_name,
            "checkpoint": str(checkpoint),
            "data": bundle.source,
            "params": result.params,
            "critical_channels": result.kept_channels,
            "total_channels": result.total_channels,
            "index_bytes": (stage / "critical_index").stat().st_size,
            "layers": rows,
        }
        atomic_write_json(stage / "slice.json", summary)
    summary["index"] = str(out / "critical_index")
    if json_out:
        emit_json(summary)
        return
    console.print(
        table(
            f"critical channels of {meta.timm_name} ({result.params})",
            ["layer", "critical", "total", "share"],
            [[r["layer"], r["critical"], r["channels"], f"{r['critical'] / r['channels']:.0%}"] for r in rows],
        )
    )
    console.print(
        f"{result.kept_channels}/{result.total_channels} channels critical; index "
        f"{summary['index_bytes']} bytes → {summary['index']}"
    )
