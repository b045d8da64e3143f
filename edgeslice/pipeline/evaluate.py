"""``edgeslice evaluate-slices``: the paper's RQ1 masking sweep, its Table 1/2 masking study and DeepArc.

config = EvaluateSlicesConfig(model="mlp", checkpoint=Path("out/train/model.safetensors"), data="digits",
                              thetas=(0.9, 0.99), ratios=(0.5, 1.0), out=Path("out/eval"))
report = run(config, torch.device("cpu"))
print(report.auc, report.files)

The measurement itself is :func:`edgeslice.studies.rq1.run_evaluation` with an
:class:`~edgeslice.studies.rq1.EvaluateConfig` (:meth:`EvaluateSlicesConfig.evaluation` builds it); this module loads
the checkpoint and its data, runs it once, and writes rq1.json, rq1.csv, masking.csv and rq1.png.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts.files import atomic_write_bytes, atomic_write_json
from ..artifacts.staging import claim_output, staging_dir
from ..models import load_checkpoint, resolve_model_name
from ..slicing.slicer import STRATEGIES
from ..studies.figures import plot_rq1
from ..studies.rq1 import PAPER_METRICS, EvaluateConfig, run_evaluation
from ..studies.sweep import DEFAULT_RATIOS, DEFAULT_THETAS
from .baseline import check_against_data, load_checkpoint_data, make_prepare
from .calibrate import calibration_set
from .report import HIDDEN
from .slice import Loaded

#: The columns of rq1.csv, in order.
POINT_COLUMNS = [
    "metric",
    "strategy",
    "setting",
    "value",
    "critical_channels",
    "kept_channels",
    "total_channels",
    "params_before",
    "params_after",
    "compression_rate",
    "accuracy",
]
MASKING_COLUMNS = ["metric", "scope", "band", "accuracy"]


@dataclass(frozen=True)
class EvaluateSlicesConfig:
    """What ``edgeslice evaluate-slices`` does, as one validated value (the command's options, same names).

    ``metric`` and ``strategy`` are the repeated options (None: the paper's metrics, every strategy).
    """

    model: str
    checkpoint: Path
    data: str = "fashion-mnist"
    metric: tuple[str, ...] | None = None
    strategy: tuple[str, ...] | None = None
    thetas: tuple[float, ...] = DEFAULT_THETAS
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    similarity: str = "cka"
    baseline: str = "zero"
    solver: str = "exact"
    interval: int = 1
    calib_per_class: int = 100
    test_limit: int | None = None
    mask: str = "coupled"
    bands: int = 5
    deeparc: bool = True
    deeparc_threshold: float = 0.99
    out: Path = Path("edgeslice-out/evaluate")
    download: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.evaluation()  # the evaluation settings validate themselves (a ValueError names the bad one)

    def evaluation(self) -> EvaluateConfig:
        """The measurement's settings (recorded in rq1.json as ``config``)."""
        return EvaluateConfig(
            metrics=tuple(self.metric) if self.metric else PAPER_METRICS,
            strategies=tuple(dict.fromkeys(self.strategy)) if self.strategy else STRATEGIES,
            similarity=self.similarity,
            baseline=self.baseline,
            solver=self.solver,
            interval=self.interval,
            calib_per_class=self.calib_per_class,
            test_limit=self.test_limit,
            mask=self.mask,
            bands=self.bands,
            deeparc=self.deeparc,
            deeparc_threshold=self.deeparc_threshold,
            seed=self.seed,
            thetas=self.thetas,
            ratios=self.ratios,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EvaluateSlicesReport:
    """What ``edgeslice evaluate-slices`` measured and wrote (``--json`` prints these fields but ``study``).

    ``study`` is the whole measurement, as rq1.json holds it (points, masking study, DeepArc, coupling, config):
    what the human tables show beyond the JSON summary.
    """

    model: str
    out: str
    baseline_accuracy: float
    auc: dict[str, Any]
    deeparc: dict[str, Any] | None
    timings_s: dict[str, float]
    files: list[str]
    study: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata=HIDDEN)


def load(config: EvaluateSlicesConfig, device: torch.device) -> Loaded:
    """The checkpoint (on ``device``) and its data, checked against each other.

    Raises:
        ModelError: the checkpoint is unreadable, not ``config.model``, or does not fit the data.
        DataError: the data set is unusable.
    """
    net, meta = load_checkpoint(config.checkpoint, expect_model=resolve_model_name(config.model))
    bundle = load_checkpoint_data(meta, config.data, seed=config.seed, download=config.download)
    check_against_data(meta, bundle)
    return Loaded(net.to(device), meta, bundle)


def measure(loaded: Loaded, config: EvaluateSlicesConfig, device: torch.device) -> dict[str, Any]:
    """Calibrate once, then the RQ1 sweep, the masking study and DeepArc: the rq1.json document."""
    settings = config.evaluation()
    study = run_evaluation(
        loaded.net,
        calibration_set(loaded.bundle, settings.calib_per_class, config.seed),
        loaded.bundle.test,
        num_classes=len(loaded.meta.classes),
        cfg=settings,
        prepare=make_prepare(loaded.meta),
        device=device,
    )
    study.update(model=loaded.meta.timm_name, checkpoint=str(config.checkpoint), data=loaded.bundle.describe())
    return study


def write(loaded: Loaded, study: dict[str, Any], out: Path) -> None:
    """Write rq1.json, rq1.csv, masking.csv (when the masking study ran) and rq1.png into ``out``."""
    with staging_dir(out) as staging:
        atomic_write_json(staging / "rq1.json", study)
        atomic_write_bytes(staging / "rq1.csv", csv_bytes(study["points"], POINT_COLUMNS))
        if study["masking"]:
            atomic_write_bytes(staging / "masking.csv", csv_bytes(study["masking"], MASKING_COLUMNS))
        plot_rq1(
            study["points"],
            staging / "rq1.png",
            title=f"{loaded.meta.timm_name} on {loaded.bundle.name}: accuracy of masked slices vs compression rate",
            baseline_accuracy=study["baseline_accuracy"],
            deeparc=study["deeparc"],
            auc=study["auc"],
        )


def csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    """``rows`` as CSV with a header of ``columns`` (floats to 6 significant digits, other keys ignored)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().encode()


def run(config: EvaluateSlicesConfig, device: torch.device) -> EvaluateSlicesReport:
    """Measure RQ1 on ``config.checkpoint`` and write ``config.out``/rq1.json, rq1.csv, masking.csv and rq1.png.

    Raises:
        OutputError: ``config.out`` cannot be written or holds files edgeslice did not write (checked first).
        ModelError: the checkpoint is unreadable, not ``config.model``, or does not fit the data.
        DataError: the data set is unusable.
    """
    with claim_output(config.out):
        loaded = load(config, device)
        study = measure(loaded, config, device)
        write(loaded, study, config.out)
        files = sorted(p.name for p in config.out.iterdir())
    deeparc = study["deeparc"]
    return EvaluateSlicesReport(
        model=loaded.meta.timm_name,
        out=str(config.out),
        baseline_accuracy=study["baseline_accuracy"],
        auc=study["auc"],
        deeparc={k: deeparc[k] for k in ("compression_rate", "accuracy", "redundant", "max_cka")} if deeparc else None,
        timings_s=study["timings_s"],
        files=files,
        study=study,
    )


__all__ = [
    "MASKING_COLUMNS",
    "POINT_COLUMNS",
    "EvaluateSlicesConfig",
    "EvaluateSlicesReport",
    "csv_bytes",
    "load",
    "measure",
    "run",
    "write",
]
