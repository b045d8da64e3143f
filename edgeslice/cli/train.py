"""``edgeslice train``: train a baseline model and save it as safetensors + JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    DataOpt,
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    ImageSizeOpt,
    JsonOpt,
    ModelArg,
    SeedOpt,
    _positive,
    claim_out,
    console,
    emit_json,
    handle_errors,
    setup,
    table,
)


@handle_errors
def train_command(
    model: ModelArg,
    data: DataOpt = "fashion-mnist",
    epochs: Annotated[float, typer.Option("--epochs", callback=_positive, help="Passes over the data.")] = 3.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    lr: Annotated[float, typer.Option("--lr", callback=_positive, help="Peak learning rate (one-cycle).")] = 2e-2,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("edgeslice-out/train"),
    image_size: ImageSizeOpt = None,
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
) -> None:
    """Train MODEL from scratch on --data; writes OUT/model.safetensors + OUT/model.json."""
    device = setup(json_out, device_type, seed)
    claim_out(out)
    from edgeslice.artifacts.staging import staging_dir
    from edgeslice.data import load_data
    from edgeslice.models import save_checkpoint
    from edgeslice.pipeline import train_baseline

    bundle = load_data(data, image_size=image_size, seed=seed, download=download)
    net, meta = train_baseline(model, bundle, epochs=epochs, seed=seed, device=device, batch_size=batch_size, lr=lr)
    with staging_dir(out) as stage:
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
