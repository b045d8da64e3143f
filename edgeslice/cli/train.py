"""``edgeslice train``: train a baseline model and save it as safetensors + JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    ImageSizeOpt,
    JsonOpt,
    ModelArg,
    QuietOpt,
    SeedOpt,
    config_from,
    handle_errors,
    positive,
    setup,
    show_report,
)
from ._training import (
    AmpOpt,
    AugmentMode,
    AugmentOpt,
    MeanOpt,
    PretrainedFileOpt,
    PretrainedOpt,
    StdOpt,
    UseEmaOpt,
    WorkersOpt,
    parse_floats,
)


@handle_errors
def train_command(
    model: ModelArg,
    data: DataOpt = "fashion-mnist",
    epochs: Annotated[float, typer.Option("--epochs", callback=positive, help="Passes over the data.")] = 10.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    lr: Annotated[float, typer.Option("--lr", callback=positive, help="Peak learning rate (one-cycle).")] = 2e-2,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("edgeslice-out/train"),
    image_size: ImageSizeOpt = None,
    classes: ClassesOpt = None,
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
    amp: AmpOpt = False,
) -> None:
    """Train MODEL on --data (from scratch, or from --pretrained weights); writes OUT/model.safetensors + model.json."""
    device = setup(json_out, device_type, seed, quiet)
    from edgeslice.pipeline.train import TrainConfig, run

    config = config_from(TrainConfig, locals(), mean=parse_floats(mean), std=parse_floats(std))
    report = run(config, device)
    show_report(report, json_out, f"trained {report.model} on {report.data}")
