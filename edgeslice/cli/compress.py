"""``edgeslice compress``: slice, restructure, fine-tune and export a model in one command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from edgeslice.pipeline.results import CompressReport

from ._common import (
    CalibOpt,
    CheckpointOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    ImageSizeOpt,
    JsonOpt,
    MetricName,
    MetricOpt,
    ModelArg,
    PrunerName,
    QuietOpt,
    RatioOpt,
    SeedOpt,
    SimilarityName,
    SimilarityOpt,
    StrategyName,
    StrategyOpt,
    ThetaOpt,
    config_from,
    console,
    emit_json,
    fmt_bytes,
    handle_errors,
    positive,
    setup,
    table,
    unit_interval,
)
from ._training import (
    AmpOpt,
    AugmentMode,
    AugmentOpt,
    DenseControlOpt,
    DistillAlphaOpt,
    DistillOpt,
    DistillTemperatureOpt,
    MeanOpt,
    PretrainedFileOpt,
    PretrainedOpt,
    StdOpt,
    UseEmaOpt,
    WorkersOpt,
    parse_floats,
)


class WidthRule(str, Enum):
    """How many channels each group keeps after the slice."""

    theta = "theta"
    cap = "cap"
    lamp = "lamp"


class QuantizeMode(str, Enum):
    """Post-training quantization of the exported ONNX model."""

    none = "none"
    int8 = "int8"


DEVICE_HELP = (
    "Device profile (a name from `edgeslice devices list`, or a .toml file): search θ for the most accurate model "
    "that meets its flash, RAM and latency budgets (--theta is then ignored) and pick fp32 or int8."
)


TrainEpochsOpt = Annotated[
    float, typer.Option("--train-epochs", callback=positive, help="Baseline epochs when no --checkpoint.")
]
FinetuneEpochsOpt = Annotated[
    float, typer.Option("--finetune-epochs", min=0.0, help="Fine-tuning epochs after restructuring.")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1)]
PrunerOpt = Annotated[
    PrunerName, typer.Option("--pruner", help="Iterative unstructured pruning after restructuring (none: skip).")
]
PruneStepOpt = Annotated[
    float, typer.Option("--prune-step", callback=unit_interval, help="Share of remaining weights per iteration.")
]
MaxIterationsOpt = Annotated[int, typer.Option("--max-iterations", min=1, help="Pruning iterations at most.")]
MaxAccDropOpt = Annotated[
    float, typer.Option("--max-acc-drop", min=0.0, help="Stop pruning past this drop (points) vs the baseline.")
]
FinetuneStepsOpt = Annotated[
    int, typer.Option("--finetune-steps", min=0, help="Fine-tuning steps after each pruning iteration.")
]
RoundToOpt = Annotated[
    int, typer.Option("--round-to", min=1, help="Keep a multiple of this many channels per group (1: exact).")
]
WidthsOpt = Annotated[
    WidthRule,
    typer.Option(
        "--widths",
        help="cap (default): one width cap for every group; theta: each layer's critical channels (the paper's "
        "rule); lamp: Torch-Pruning LAMP's widths. cap and lamp stay within the θ slice's parameter count and keep "
        "the channels that become critical first as θ grows.",
    ),
]
GrowThetaOpt = Annotated[
    float,
    typer.Option(
        "--grow-theta",
        min=0.0,
        max=1.0,
        help="θ at which the compact model is sliced again for the device: its critical channels stay frozen when "
        "the device grows new classes (edgeslice increment), the others are what growth trains.",
    ),
]
DeviceProfileOpt = Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)]
QuantizeOpt = Annotated[
    QuantizeMode,
    typer.Option(
        "--quantize",
        help="int8: also write model.int8.onnx (onnxruntime static QDQ, per-channel, calibrated on the "
        "calibration set) and compare it with fp32 on the test set.",
    ),
]
CompressOutOpt = Annotated[Path | None, typer.Option("--out", help="Output folder [default: edgeslice-out/<model>].")]


@handle_errors
def compress_command(
    model: ModelArg,
    checkpoint: CheckpointOpt = None,
    data: DataOpt = "fashion-mnist",
    theta: ThetaOpt = 0.95,
    metric: MetricOpt = MetricName.taylor,
    strategy: StrategyOpt = StrategyName.semantic,
    ratio: RatioOpt = 0.5,
    similarity: SimilarityOpt = SimilarityName.cka,
    calib_per_class: CalibOpt = 100,
    train_epochs: TrainEpochsOpt = 3.0,
    finetune_epochs: FinetuneEpochsOpt = 1.0,
    batch_size: BatchSizeOpt = 256,
    pruner: PrunerOpt = PrunerName.none,
    prune_step: PruneStepOpt = 0.2,
    max_iterations: MaxIterationsOpt = 10,
    max_acc_drop: MaxAccDropOpt = 1.0,
    finetune_steps: FinetuneStepsOpt = 200,
    round_to: RoundToOpt = 8,
    widths: WidthsOpt = WidthRule.cap,
    grow_theta: GrowThetaOpt = 0.95,
    device: DeviceProfileOpt = None,
    quantize: QuantizeOpt = QuantizeMode.none,
    image_size: ImageSizeOpt = None,
    classes: ClassesOpt = None,
    out: CompressOutOpt = None,
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    pretrained: PretrainedOpt = False,
    pretrained_file: PretrainedFileOpt = None,
    use_ema: UseEmaOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    augment: AugmentOpt = AugmentMode.auto,
    workers: WorkersOpt = None,
    distill: DistillOpt = False,
    distill_temperature: DistillTemperatureOpt = 4.0,
    distill_alpha: DistillAlphaOpt = 0.5,
    amp: AmpOpt = False,
    dense_control: DenseControlOpt = True,
) -> None:
    """Compress MODEL: calibrate, slice at θ, remove non-critical channels, fine-tune, export ONNX + index.

    Without --checkpoint a baseline is trained on --data and cached under $EDGESLICE_HOME (~/.cache/edgeslice).
    """
    device_ = setup(json_out, device_type, seed, quiet)
    from edgeslice.pipeline import CompressConfig, SliceConfig
    from edgeslice.pipeline.compress import run
    from edgeslice.pruning import IterativePruneConfig

    options = locals()
    cfg = config_from(
        CompressConfig,
        options,
        slicing=config_from(SliceConfig, options),
        pruning=config_from(IterativePruneConfig, options),
        mean=parse_floats(mean),
        std=parse_floats(std),
    )
    report = run(cfg, device_, out)
    if json_out:
        from edgeslice.pipeline.report import report_json

        emit_json(report_json(report))
        return
    print_report(report, Path(report.out))


def _latency_label(rec: dict[str, Any], what: str = "") -> str:
    threads = rec.get("threads")
    who = "onnxruntime" if threads is None else f"onnxruntime, {threads} thread{'s' if threads != 1 else ''}"
    size = rec.get("input_shape", [None])[-1]
    return f"{who}, batch {rec.get('batch', 1)}" + (f", {size} px" if size else "") + what + " (ms)"


def _onnx_rows(before: dict[str, Any], after: dict[str, Any]) -> list[list[str]]:
    """Size, onnxruntime latency (the device figure first: batch 1 on the device's threads) and peak activation memory
    of two ONNX files (entries of a report, see :func:`edgeslice.deploy.measure.onnx_cost`), side by side."""
    rows = [
        ["ONNX size", fmt_bytes(before["raw_bytes"]), fmt_bytes(after["raw_bytes"])],
        ["ONNX size (gzip)", fmt_bytes(before["gzip_bytes"]), fmt_bytes(after["gzip_bytes"])],
    ]
    for key, what in (("latency_device", ""), ("latency_reference_224", ", reference"), ("latency", ""),
                      ("latency_batch32", "")):  # fmt: skip
        measured = [r if r and "median_ms" in r else None for r in (before.get(key), after.get(key))]
        if measured[1]:  # absent in older reports, for int8 (224 px), and for a model sized for its input (224 px)
            rows.append([_latency_label(measured[1], what), *(f"{r['median_ms']:.3f}" if r else "" for r in measured)])
    peaks = [before.get("peak_activation"), after.get("peak_activation")]
    if all(peaks):
        rows.append(["peak activations, batch 1 (ONNX graph)", *(fmt_bytes(p["peak_bytes"]) for p in peaks)])
        if all("budget_estimate_bytes" in p for p in peaks):
            rows.append(["  RAM budget's estimate", *(fmt_bytes(p["budget_estimate_bytes"]) for p in peaks)])
    return rows


def print_report(report: CompressReport, out: Path, title_prefix: str = "") -> None:
    """The human-readable summary of a compress report (``compress`` and ``run``): tables on stdout."""
    s = report.slicing
    select = f"θ={s['theta']:g}" if "theta" in s else f"ratio={s.get('ratio', '?')}"
    control = report.dense_control
    rows = [
        ["parameters", f"{report.params_before:,}", f"{report.params_after:,}"],
        ["compression rate", "", f"{report.compression_rate:.1%}"],
        ["non-zero parameters", f"{report.params_before:,}", f"{report.nonzero_params_after:,}"],
        ["test accuracy (%)", f"{report.accuracy_before:.2f}", f"{report.accuracy_after:.2f}"],
        ["  before fine-tune (%)", "", f"{report.accuracy_restructured:.2f}"],
        *([["  dense control, same fine-tune (%)", f"{control['accuracy']:.2f}", ""]] if control else []),
        ["critical channels", f"{s['total_channels']}", f"{s['critical_channels']}"],
        *_onnx_rows(report.onnx_before, report.onnx_after),
        ["ONNX parity max |Δ|", "", f"{report.onnx_parity_max_abs:.2e}"],
        ["index file", "", fmt_bytes(report.index_bytes)],
    ]
    title = f"{title_prefix}{report.model} on {report.data['name']} — {s['strategy']} slicing, "
    console.print(table(f"{title}{s.get('metric', '')}, {select}", ["", "before", "after"], rows))
    if report.pruning:
        p = report.pruning
        pruner = report.config["pruning"]["pruner"]
        console.print(f"{pruner}: {p['iterations']} iterations ({p['iterations_kept']} kept), stop: {p['stop_reason']}")
    if report.int8:
        console.print(_int8_table(report))
    if report.budget:
        console.print(_budget_table(report.budget))
    int8_file = "model.int8.onnx, " if report.int8 else ""
    console.print(
        f"artifacts in {out}: model.onnx, {int8_file}model.safetensors, model.json, critical_index, report.json, "
        f"manifest.json, critical_ratio.png ({report.timings_s['total_s']:.0f} s)"
    )


def _int8_table(report: CompressReport):
    q, a = report.int8, report.onnx_after
    p = q["parity"]
    rows = [
        [f"test accuracy (%), {q['eval_subset']}", f"{p['accuracy_fp32']:.2f}", f"{p['accuracy_int8']:.2f}"],
        *_onnx_rows(a, q),
        ["top-1 agreement with fp32", "", f"{p['top1_agreement']:.2%} (≥ {p['min_top1_agreement']:.0%} required)"],
        ["max |Δlogit| (max |logit|)", "", f"{p['max_abs_logit_diff']:.3g} ({p['max_abs_logit']:.3g})"],
    ]
    return table("int8 (onnxruntime static QDQ, per-channel) vs fp32 ONNX, on this machine", ["", "fp32", "int8"], rows)


def _budget_table(budget: dict[str, Any]):
    from edgeslice.deploy.devices import BudgetCheck

    rows = []
    for d in budget["checks"]:
        c = BudgetCheck(**d)
        fmt = _fmt_value(c.unit)
        margin = "" if c.margin is None else fmt(c.margin)
        rows.append([c.name, fmt(c.limit), fmt(c.value), margin, "ok" if c.ok else "FAIL"])
    title = (
        f"device {budget['profile']['name']}: θ={budget['theta']:g}, {budget['precision']} "
        f"(latency = MACs / {budget['profile']['macs_per_s'][budget['precision']] / 1e6:g} MMAC/s, a rough estimate)"
    )
    return table(title, ["budget", "limit", "value", "margin", ""], rows)


def _fmt_value(unit: str):
    if unit == "bytes":
        return _fmt_bytes_signed
    if unit == "ms":
        return lambda v: f"{v:.3g} ms"
    return str


def _fmt_bytes_signed(n: float) -> str:
    return ("-" if n < 0 else "") + fmt_bytes(abs(n))
