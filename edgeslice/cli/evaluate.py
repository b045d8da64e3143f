"""``edgeslice evaluate-slices``: the paper's RQ1 masking sweep, its Table 1/2 masking study and DeepArc."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    BaselineName,
    BaselineOpt,
    CalibOpt,
    DataOpt,
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    IntervalOpt,
    JsonOpt,
    MetricName,
    ModelArg,
    QuietOpt,
    SeedOpt,
    SimilarityName,
    SimilarityOpt,
    SolverName,
    SolverOpt,
    StrategyName,
    console,
    emit_json,
    handle_errors,
    setup,
    table,
)


class MaskName(str, Enum):
    coupled = "coupled"
    critical = "critical"


MetricsOpt = Annotated[
    list[MetricName] | None,
    typer.Option(
        "--metric",
        help="Metrics to compare (repeat; default: avg var ens deeplift taylor). deeplift is approximate on "
        "MobileNetV3-style models (captum treats Hardswish/Hardsigmoid and squeeze-excite as plain gradients).",
    ),
]
StrategiesOpt = Annotated[
    list[StrategyName] | None,
    typer.Option(
        "--strategy",
        help="Strategies (repeat; default: all). random/magnitude keep exactly the per-layer budget of the "
        "semantic slice at each θ.",
    ),
]
ThetasOpt = Annotated[str, typer.Option("--thetas", help="Semantic θ values: a,b,c or start:stop:step.")]
RatiosOpt = Annotated[
    str, typer.Option("--ratios", help="Kept shares per layer for category/global: a,b,c or start:stop:step.")
]
TestLimitOpt = Annotated[
    int | None, typer.Option("--test-limit", min=1, help="Evaluate on a seeded, class-stratified test sample.")
]
MaskOpt = Annotated[
    MaskName,
    typer.Option(
        "--mask",
        help="coupled: zero what a restructure would remove (default); critical: zero every non-critical "
        "channel of every layer, as the paper does.",
    ),
]
BandsOpt = Annotated[
    int, typer.Option("--bands", min=0, max=10, help="Masking study bands of 10% (0 = skip; paper: 5).")
]
DeepArcOpt = Annotated[bool, typer.Option("--deeparc/--no-deeparc", help="Also run the DeepArc baseline.")]
DeepArcThresholdOpt = Annotated[
    float, typer.Option("--deeparc-threshold", help="DeepArc: CKA at which a same-shape block is redundant.")
]


def _floats(text: str, name: str) -> tuple[float, ...]:
    """``0.9,0.95`` or ``0.90:0.99:0.01`` (start:stop:step, inclusive) → floats in (0, 1]."""
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(round((stop - start) / step)) + 1
            values = tuple(round(start + i * step, 6) for i in range(n))
        else:
            values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise typer.BadParameter(f"{name}: expected a,b,c or start:stop:step, got {text!r}") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise typer.BadParameter(f"{name}: every value must be in (0, 1], got {text!r}")
    return values


@handle_errors
def evaluate_command(
    model: ModelArg,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", exists=True, help="model.safetensors (with model.json beside it).")
    ],
    data: DataOpt = "fashion-mnist",
    metric: MetricsOpt = None,
    strategy: StrategiesOpt = None,
    thetas: ThetasOpt = "0.90:0.99:0.01",
    ratios: RatiosOpt = "0.1:1.0:0.1",
    similarity: SimilarityOpt = SimilarityName.cka,
    baseline: BaselineOpt = BaselineName.zero,
    solver: SolverOpt = SolverName.exact,
    interval: IntervalOpt = 1,
    calib_per_class: CalibOpt = 100,
    test_limit: TestLimitOpt = None,
    mask: MaskOpt = MaskName.coupled,
    bands: BandsOpt = 5,
    deeparc: DeepArcOpt = True,
    deeparc_threshold: DeepArcThresholdOpt = 0.99,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("edgeslice-out/evaluate"),
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """RQ1 of the paper: accuracy with only the critical channels kept vs compression rate, for every metric and
    strategy, from ONE calibration pass. Writes OUT/rq1.csv, rq1.json, rq1.png (like the paper's Fig. 5) and
    masking.csv (Tables 1–2)."""
    theta_values, ratio_values = _floats(thetas, "--thetas"), _floats(ratios, "--ratios")
    device = setup(json_out, device_type, seed, quiet)
    from edgeslice.pipeline.evaluate import EvaluateSlicesConfig, run
    from edgeslice.pipeline.report import report_json

    config = EvaluateSlicesConfig(
        model=model,
        checkpoint=checkpoint,
        data=data,
        metric=tuple(m.value for m in metric) if metric else None,
        strategy=tuple(s.value for s in strategy) if strategy else None,
        thetas=theta_values,
        ratios=ratio_values,
        similarity=similarity.value,
        baseline=baseline.value,
        solver=solver.value,
        interval=interval,
        calib_per_class=calib_per_class,
        test_limit=test_limit,
        mask=mask.value,
        bands=bands,
        deeparc=deeparc,
        deeparc_threshold=deeparc_threshold,
        out=out,
        download=download,
        seed=seed,
    )
    report = run(config, device)
    if json_out:
        emit_json(report_json(report))
        return
    _print_tables(report.study, report.model)
    console.print(f"baseline accuracy {report.baseline_accuracy:.2f}%; files in {report.out}")


def _print_tables(report: dict, timm_name: str) -> None:
    strategies = list(report["config"]["strategies"])
    rows = []
    for metric, entry in report["auc"].items():
        rng = entry["range"]
        cells = [f"{entry['auc'][s]:.2f}" if entry["auc"].get(s) is not None else "-" for s in strategies]
        order = {True: "yes", False: "no", None: "-"}[entry["order_ok"]]
        rows.append([metric, f"{rng[0]:.1f}-{rng[1]:.1f}%" if rng else "-", *cells, order])
    console.print(
        table(
            f"RQ1 AUC of {timm_name} (mean accuracy % over the common compression range)",
            ["metric", "range", *strategies, "sem>cat>glob"],
            rows,
        )
    )
    if report["masking"]:
        bands = list(dict.fromkeys(r["band"] for r in report["masking"]))
        metrics = list(dict.fromkeys(r["metric"] for r in report["masking"]))
        for scope in ("global", "category"):
            acc = {(r["metric"], r["band"]): r["accuracy"] for r in report["masking"] if r["scope"] == scope}
            console.print(
                table(
                    f"accuracy % after masking each band of top-ranked channels ({scope})",
                    ["band", *metrics],
                    [[b, *[f"{acc[(m, b)]:.2f}" for m in metrics]] for b in bands],
                )
            )
    if report["deeparc"]:
        d = report["deeparc"]
        top = f"{d['max_cka']:.4f}" if d["max_cka"] is not None else "-"
        console.print(
            f"DeepArc (CKA ≥ {d['threshold']}): {len(d['redundant'])} block(s) removed, compression "
            f"{100 * d['compression_rate']:.1f}%, accuracy {d['accuracy']:.2f}% (max block CKA {top})"
        )
