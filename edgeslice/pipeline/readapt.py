"""``edgeslice readapt``: repair a model against adversarial inputs by training only its critical channels.

config = ReadaptConfig(model="mobilenetv3_small_050", checkpoint=Path("ck/model.safetensors"),
                       index=Path("ck/critical_index"), data="digits", out=Path("out/readapt"))
report = run(config, torch.device("cpu"))
print(report.raa_before, report.raa)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.files import atomic_write_json
from ..artifacts.staging import claim_output, staging_dir
from ..data import DataBundle, make_prepare
from ..index import CriticalIndex
from ..maintain import ATTACKS, AttackConfig, critical_plan, run_readapt
from ..maintain import ReadaptConfig as RepairSettings
from ..models import ModelMeta, fingerprint, load_checkpoint, resolve_model_name, save_checkpoint
from ..ondevice import TrainPlan, channel_groups
from ..slicing import find_layers
from ..train import iterate_batches
from .baseline import check_against_data, load_checkpoint_data
from .report import report_json


@dataclass(frozen=True)
class ReadaptConfig:
    """What ``edgeslice readapt`` does, as one validated value (the command's options, same names)."""

    model: str
    checkpoint: Path
    index: Path
    data: str = "fashion-mnist"
    attack: str = "fgsm"
    eps: float = 0.1
    alpha: float | None = None
    steps: int = 10
    epochs: int = 5
    samples: int = 1000
    eval_samples: int = 1000
    batch_size: int = 50
    lr: float = 1e-3
    optimizer: str = "adamw"
    train_classifier: bool = True
    regenerate: bool = False
    out: Path = Path("edgeslice-out/readapt")
    download: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; valid: {', '.join(ATTACKS)}")
        if self.eps <= 0 or self.lr <= 0:
            raise ValueError(f"eps and lr must be > 0, got {self.eps} and {self.lr}")
        if min(self.steps, self.epochs, self.samples, self.eval_samples, self.batch_size) < 1:
            raise ValueError("steps, epochs, samples, eval-samples and batch-size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def settings(self) -> RepairSettings:
        """The repair protocol's settings (:class:`edgeslice.maintain.ReadaptConfig`); what manifest.json records."""
        return RepairSettings(
            attack=AttackConfig(self.attack, eps=self.eps, alpha=self.alpha, steps=self.steps),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            samples=self.samples,
            eval_samples=self.eval_samples,
            train_classifier=self.train_classifier,
            regenerate=self.regenerate,
            seed=self.seed,
        )


@dataclass(frozen=True)
class ReadaptReport:
    """What ``edgeslice readapt`` measured and wrote (``--json`` prints these fields; report.json all but ``out``)."""

    tpr: float
    trainable_parameters: int
    total_parameters: int
    ra: float
    raa: float
    pgd20: float
    clean_after: float
    ra_before: float
    raa_before: float
    pgd20_before: float
    clean_before: float
    attack: dict[str, Any]
    reattack: dict[str, Any]
    samples: dict[str, int]
    train_seconds: float
    wall_seconds: float
    training: dict[str, Any]
    plan: dict[str, Any]
    config: dict[str, Any]
    model: str
    checkpoint: str
    index: str
    index_params: dict[str, Any]
    data: dict[str, Any]
    out: str


@dataclass(frozen=True)
class Loaded:
    """The model to repair, the index sliced from it, and the data it was trained on."""

    net: nn.Module
    meta: ModelMeta
    index: CriticalIndex
    bundle: DataBundle


def load_inputs(config: ReadaptConfig) -> Loaded:
    """Load the checkpoint, its index and its data set; the data must fit the model.

    Raises:
        ModelError: the checkpoint is not of ``config.model``.
        IndexFileError: the index file is unreadable.
        DataError: the data set does not fit the model.
    """
    net, meta = load_checkpoint(config.checkpoint, expect_model=resolve_model_name(config.model))
    index = CriticalIndex.load(config.index)
    bundle = load_checkpoint_data(meta, config.data, seed=config.seed, download=config.download)
    check_against_data(meta, bundle)
    return Loaded(net, meta, index, bundle)


def critical_channels_plan(loaded: Loaded, train_classifier: bool) -> TrainPlan:
    """The rows the repair trains: the index's critical channels (and the classifier); the index must be this
    model's.

    Raises:
        IndexFileError: the index was sliced from other weights or another model.
    """
    net, meta, index = loaded.net, loaded.meta, loaded.index
    example = make_prepare(meta)(next(iterate_batches(loaded.bundle.test, 2))[0])
    layers = find_layers(net, example)
    index.check_model(
        meta.timm_name,
        [{"name": la.name, "channels": la.channels} for la in layers],
        meta.fingerprint or fingerprint(net),
    )
    groups = channel_groups(net, index.layers, example)
    return critical_plan(
        net, groups, index.critical, train_classifier=train_classifier, info={"trainable": "critical channels"}
    )


def write_repaired(out: Path, loaded: Loaded, settings: RepairSettings, measured: dict[str, Any], seed: int) -> None:
    """Write the repaired checkpoint, report.json and manifest.json into ``out`` (all or nothing)."""
    meta = loaded.meta
    with staging_dir(out, config=settings.to_dict(), seed=seed) as staging:
        info = {**meta.info, "readapt": {"source_fingerprint": meta.fingerprint, "attack": settings.attack.describe()}}
        info["test_accuracy"] = measured["clean_after"]
        repaired = replace(meta, info=info, shapes={}, fingerprint="")
        save_checkpoint(loaded.net.cpu(), repaired, staging / "model.safetensors")
        atomic_write_json(staging / "report.json", measured)


def run(config: ReadaptConfig, device: torch.device) -> ReadaptReport:
    """Repair ``config.checkpoint`` (paper Eq. 6-7) and write ``config.out``: the repaired checkpoint, report.json
    and manifest.json. Every parameter outside the index's critical channels stays bit-identical.

    Raises:
        OutputError: ``config.out`` cannot be written or holds files edgeslice did not write (checked first).
        IndexFileError: the index is unreadable or was not sliced from this checkpoint.
    """
    with claim_output(config.out):
        settings = config.settings()
        loaded = load_inputs(config)
        plan = critical_channels_plan(loaded, config.train_classifier)
        bundle, prepare = loaded.bundle, make_prepare(loaded.meta)
        measured = run_readapt(
            loaded.net.to(device), plan, bundle.train, bundle.test, settings, prepare=prepare, device=device
        )
        measured.update(
            model=loaded.meta.timm_name,
            checkpoint=str(config.checkpoint),
            index=str(config.index),
            index_params=loaded.index.params,
            data=bundle.describe(),
        )
        report = ReadaptReport(**measured, out=str(config.out))
        write_repaired(config.out, loaded, settings, _without_out(report), config.seed)
    return report


def _without_out(report: ReadaptReport) -> dict[str, Any]:
    return {k: v for k, v in report_json(report).items() if k != "out"}


__all__ = ["ReadaptConfig", "ReadaptReport", "run"]
