"""``edgeslice slice``: find the critical neurons of a checkpoint and write the index, its summary and a chart.

config = SliceRunConfig(model="mlp", checkpoint=Path("out/train/model.safetensors"), data="digits", out=Path("out/s"))
report = run(config, torch.device("cpu"))
print(report.critical_channels, report.total_channels, report.index)

The slicing settings themselves are :class:`~edgeslice.pipeline.config.SliceConfig` (what ``compress`` shares);
:meth:`SliceRunConfig.slicing` builds it, and it is what ``manifest.json`` records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.files import atomic_write_json
from ..artifacts.staging import claim_output, staging_dir
from ..classes import select_classes
from ..data import DataBundle
from ..index import CriticalIndex
from ..models import ModelMeta, load_checkpoint, resolve_model_name
from ..slicing import SliceResult
from .baseline import check_against_data, load_checkpoint_data
from .calibrate import layer_table, plot_layer_ratios, slice_model
from .config import SliceConfig
from .report import report_json


@dataclass(frozen=True)
class SliceRunConfig:
    """What ``edgeslice slice`` does, as one validated value (the command's options, same names)."""

    model: str
    checkpoint: Path
    data: str = "fashion-mnist"
    metric: str = "taylor"
    strategy: str = "semantic"
    theta: float = 0.95
    ratio: float = 0.5
    similarity: str = "cka"
    baseline: str = "zero"
    solver: str = "exact"
    interval: int = 1
    calib_per_class: int = 100
    classes: str | None = None
    out: Path = Path("edgeslice-out/slice")
    download: bool = False
    seed: int = 0
    emit_c_header: bool = False
    class_batch: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        self.slicing()  # the slicing settings validate themselves (a ValueError names the bad one)
        if self.class_batch is not None and self.class_batch < 1:
            raise ValueError(f"class-batch must be >= 1, got {self.class_batch}")

    def slicing(self) -> SliceConfig:
        """The slicing settings alone (what ``compress`` shares and ``manifest.json`` records)."""
        return SliceConfig(
            metric=self.metric,
            strategy=self.strategy,
            theta=self.theta,
            ratio=self.ratio,
            similarity=self.similarity,
            calib_per_class=self.calib_per_class,
            baseline=self.baseline,
            solver=self.solver,
            interval=self.interval,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SliceRunReport:
    """What ``edgeslice slice`` wrote and found (``--json`` prints these fields; slice.json holds all but ``index``)."""

    model: str
    checkpoint: str
    data: str
    params: dict[str, Any]
    critical_channels: int
    total_channels: int
    index_bytes: int
    layers: list[dict[str, Any]]
    index: str


@dataclass(frozen=True)
class Loaded:
    """The checkpoint and the data it is sliced on (classes selected, checked against the model)."""

    net: nn.Module
    meta: ModelMeta
    bundle: DataBundle


@dataclass(frozen=True)
class Sliced:
    """One slice of the model: the slicer's result, the index bound to the model, and its per-layer rows."""

    result: SliceResult
    index: CriticalIndex
    layers: list[dict[str, Any]]


def load(config: SliceRunConfig, device: torch.device) -> Loaded:
    """The checkpoint (on ``device``) and its data with ``config.classes`` selected.

    Raises:
        ModelError: the checkpoint is unreadable, not ``config.model``, or does not fit the data.
        DataError: the data set or the class selection is unusable.
    """
    net, meta = load_checkpoint(config.checkpoint, expect_model=resolve_model_name(config.model))
    bundle = load_checkpoint_data(meta, config.data, seed=config.seed, download=config.download, workers=config.workers)
    bundle = select_classes(bundle, config.classes, min_classes=2)
    check_against_data(meta, bundle)
    return Loaded(net.to(device), meta, bundle)


def slice_loaded(loaded: Loaded, config: SliceRunConfig, device: torch.device) -> Sliced:
    """Calibrate on the seeded per-class sample and slice (:func:`~edgeslice.pipeline.calibrate.slice_model`)."""
    _, result, index = slice_model(
        loaded.net,
        loaded.meta,
        loaded.bundle,
        config.slicing(),
        seed=config.seed,
        device=device,
        class_batch=config.class_batch,
    )
    return Sliced(result, index, layer_table(result))


def write(loaded: Loaded, sliced: Sliced, config: SliceRunConfig) -> SliceRunReport:
    """Write critical_index (and critical_index.h), critical_ratio.png, slice.json and the manifest into ``out``."""
    meta, result = loaded.meta, sliced.result
    with staging_dir(config.out, config=config.slicing().to_dict(), seed=config.seed) as staging:
        sliced.index.save(staging / "critical_index")
        if config.emit_c_header:
            from ..deploy.cheader import write_c_header

            write_c_header(sliced.index, staging / "critical_index.h")
        title = f"{meta.timm_name}: critical channels per layer"
        plot_layer_ratios(sliced.layers, staging / "critical_ratio.png", title)
        report = SliceRunReport(
            model=meta.timm_name,
            checkpoint=str(config.checkpoint),
            data=loaded.bundle.source,
            params=result.params,
            critical_channels=result.kept_channels,
            total_channels=result.total_channels,
            index_bytes=(staging / "critical_index").stat().st_size,
            layers=sliced.layers,
            index=str(config.out / "critical_index"),
        )
        atomic_write_json(staging / "slice.json", {k: v for k, v in report_json(report).items() if k != "index"})
    return report


def run(config: SliceRunConfig, device: torch.device) -> SliceRunReport:
    """Slice ``config.checkpoint`` and write ``config.out``/critical_index, critical_ratio.png and slice.json.

    Raises:
        OutputError: ``config.out`` cannot be written or holds files edgeslice did not write (checked first).
        ModelError: the checkpoint is unreadable, not ``config.model``, or does not fit the data.
        DataError: the data set or the class selection is unusable.
    """
    with claim_output(config.out):
        loaded = load(config, device)
        sliced = slice_loaded(loaded, config, device)
        return write(loaded, sliced, config)


__all__ = ["Loaded", "SliceRunConfig", "SliceRunReport", "Sliced", "load", "run", "slice_loaded", "write"]
