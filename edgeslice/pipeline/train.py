"""``edgeslice train``: train a baseline model and save it as safetensors + JSON.

config = TrainConfig(model="mobilenetv3_small_050", data="digits", epochs=1, out=Path("out/train"))
report = run(config, torch.device("cpu"))
print(report.test_accuracy, report.checkpoint)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts.staging import claim_output, staging_dir
from ..classes import select_classes
from ..data import AUGMENT_MODES
from ..models import resolve_model_name, save_checkpoint
from .baseline import BaselineRecipe, load_compress_data, train_baseline
from .config import CompressConfig


@dataclass(frozen=True)
class TrainConfig:
    """What ``edgeslice train`` does, as one validated value (the command's options, same names)."""

    model: str
    data: str = "fashion-mnist"
    epochs: float = 10.0
    batch_size: int = 256
    lr: float = 2e-2
    out: Path = Path("edgeslice-out/train")
    image_size: int | None = None
    classes: str | None = None
    download: bool = False
    seed: int = 0
    pretrained: bool = False
    pretrained_file: str | None = None
    use_ema: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str = "auto"
    workers: int | None = None
    amp: bool = False

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError(f"epochs and lr must be > 0, got {self.epochs} and {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch-size must be >= 1, got {self.batch_size}")
        if self.augment not in AUGMENT_MODES:
            raise ValueError(f"unknown augment mode {self.augment!r}; valid: {', '.join(AUGMENT_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TrainReport:
    """What ``edgeslice train`` wrote and measured (``--json`` prints these fields)."""

    checkpoint: str
    model: str
    data: str
    test_accuracy: float
    train_seconds: float
    params: int
    fingerprint: str


def run(config: TrainConfig, device: torch.device) -> TrainReport:
    """Train ``config.model`` on ``config.data`` and write ``config.out``/model.safetensors + model.json.

    Raises:
        OutputError: ``config.out`` cannot be written or holds files edgeslice did not write (checked first).
        DataError: the data set or the class selection is unusable.
    """
    with claim_output(config.out):
        # The same data path as compress: timm's data config for folders, the pretrained cfg's normalisation.
        data_options = CompressConfig(
            model=config.model,
            data=config.data,
            image_size=config.image_size,
            seed=config.seed,
            download=config.download,
            pretrained=config.pretrained,
            pretrained_file=config.pretrained_file,
            use_ema=config.use_ema,
            mean=config.mean,
            std=config.std,
            workers=config.workers,
            classes=config.classes,
        )
        bundle = load_compress_data(data_options, resolve_model_name(config.model))
        bundle = select_classes(bundle, config.classes, min_classes=2)
        recipe = BaselineRecipe(epochs=config.epochs, seed=config.seed, batch_size=config.batch_size, lr=config.lr,
                                pretrained=config.pretrained, pretrained_file=config.pretrained_file,
                                use_ema=config.use_ema, augment=config.augment, amp=config.amp)  # fmt: skip
        net, meta = train_baseline(config.model, bundle, recipe, device=device)
        manifest_config = {"command": "train", "model": meta.timm_name, "data": bundle.name, "epochs": config.epochs,
                           "batch_size": config.batch_size, "lr": config.lr, "augment": config.augment,
                           "classes": config.classes}  # fmt: skip
        with staging_dir(config.out, config=manifest_config, seed=config.seed) as staging:
            save_checkpoint(net.cpu(), meta, staging / "model.safetensors")
    return TrainReport(
        checkpoint=str(config.out / "model.safetensors"),
        model=meta.timm_name,
        data=bundle.name,
        test_accuracy=meta.info["test_accuracy"],
        train_seconds=meta.info["train_seconds"],
        params=sum(p.numel() for p in net.parameters()),
        fingerprint=meta.fingerprint,
    )


__all__ = ["TrainConfig", "TrainReport", "run"]
