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
    claim_out,
    console,
    emit_json,
    handle_errors,
    positive,
    setup,
    table,
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
    claim_out(out)
    from edgeslice.artifacts.staging import staging_dir
    from edgeslice.classes import select_classes
    from edgeslice.models import resolve_model_name, save_checkpoint
    from edgeslice.pipeline import CompressConfig, load_compress_data, train_baseline

    # The same data path as compress: timm's data config for folders, the pretrained cfg's normalisation.
    opts = CompressConfig(
        model=model,
        data=data,
        image_size=image_size,
        seed=seed,
        download=download,
        pretrained=pretrained,
        pretrained_file=str(pretrained_file) if pretrained_file else None,
        use_ema=use_ema,
        mean=parse_floats(mean),
        std=parse_floats(std),
        workers=workers,
        classes=classes,
    )
    bundle = select_classes(load_compress_data(opts, resolve_model_name(model)), classes, min_classes=2)
    net, meta = train_baseline(
        model,
        bundle,
        epochs=epochs,
        seed=seed,
        device=device,
        batch_size=batch_size,
        lr=lr,
        pretrained=pretrained,
        pretrained_file=opts.pretrained_file,
        use_ema=use_ema,
        augment=augment.value,
        amp=amp,
    )
    config = {"command": "train", "model": meta.timm_name, "data": bundle.name, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "augment": augment.value, "classes": classes}  # fmt: skip
    with staging_dir(out, config=config, seed=seed) as stage:
        save_checkpoint(net.cpu(), meta, stage / "model.safetensors")
    result = {
        "checkpoint": str(out / "model.safetensors"),
        "model": meta.timm_name,
        "data": bundle.name,
        "test_accuracy": meta.info["test_accuracy"],
        "train_seconds": meta.info["train_seconds"],
        "params": sum(p.numel() for p in net.parameters()),
        "fingerprint": meta.fingerprint,
    }
    if json_out:
        emit_json(result)
    else:
        console.print(
            table(f"trained {meta.timm_name} on {bundle.name}", ["", "value"], [[k, v] for k, v in result.items()])
        )
