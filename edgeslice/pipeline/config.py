"""The validated configurations of the pipelines: :class:`SliceConfig` and :class:`CompressConfig`.

Both are frozen dataclasses with a ``to_dict``/``from_dict`` round trip and a ``version``; recipes
(:mod:`.recipes`) and the command-line options load into them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..allocation import WIDTH_RULES
from ..data import AUGMENT_MODES
from ..pruning.iterative import IterativePruneConfig
from ..slicing import STRATEGIES
from ..slicing.deeplift import BASELINES
from ..slicing.metrics import list_metrics
from ..slicing.slicer import SOLVERS
from ..slicing.solver import SIMILARITIES

CONFIG_VERSION = 1


QUANTIZE_MODES = ("none", "int8")


@dataclass(frozen=True)
class SliceConfig:
    """How critical neurons are chosen (validated on construction)."""

    metric: str = "taylor"
    strategy: str = "semantic"
    theta: float = 0.95
    ratio: float = 0.5
    similarity: str = "cka"
    calib_per_class: int = 100
    baseline: str = "zero"
    solver: str = "exact"
    interval: int = 1
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown DeepLIFT baseline {self.baseline!r}; valid: {', '.join(BASELINES)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; valid: {', '.join(SOLVERS)}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if self.metric not in list_metrics():
            raise ValueError(f"unknown metric {self.metric!r}; valid: {', '.join(list_metrics())}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {self.similarity!r}; valid: {', '.join(SIMILARITIES)}")
        if not 0.0 < self.theta <= 1.0:
            raise ValueError(f"theta must be in (0, 1], got {self.theta}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.calib_per_class < 1:
            raise ValueError(f"calib-per-class must be >= 1, got {self.calib_per_class}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown slice settings: {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class CompressConfig:
    """Everything ``edgeslice compress`` does, as one validated value."""

    model: str = "mobilenetv3"
    data: str = "fashion-mnist"
    checkpoint: str | None = None
    slicing: SliceConfig = field(default_factory=SliceConfig)
    train_epochs: float = 3.0
    finetune_epochs: float = 1.0
    batch_size: int = 256
    lr: float = 2e-2
    finetune_lr: float = 5e-3
    image_size: int | None = None
    seed: int = 0
    download: bool = False
    pruning: IterativePruneConfig = field(default_factory=lambda: IterativePruneConfig(pruner="none"))
    #: Keep a multiple of this many channels per coupled group: onnxruntime's blocked (NCHWc) convolutions need it.
    #: Measured on MobileNetV3-small θ=0.95: batch-32 latency 9.03 ms unrounded, 2.21 ms with 8 (dense: 3.61 ms).
    round_to: int = 8
    #: Device profile name (``devices/*.toml``): search θ for the most accurate model that meets its budgets.
    device: str | None = None
    #: ``none`` or ``int8`` (onnxruntime static QDQ quantization of the exported model).
    quantize: str = "none"
    #: A subset of the data's classes (``--classes``; :func:`edgeslice.classes.select_classes`); None: all.
    classes: str | None = None
    #: Start the baseline from timm's pretrained weights (the hub), or from this local weights file.
    pretrained: bool = False
    pretrained_file: str | None = None
    #: timm ``train.py`` checkpoints (``--checkpoint`` or ``--pretrained-file``): take ``state_dict_ema``.
    use_ema: bool = False
    #: Normalisation instead of the data's (built-in sets) or the model's pretrained cfg (folders, weights).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: Train-time augmentation of streamed folders (``edgeslice.data.augment_recipe``): ``auto`` trains up to 64 px
    #: without augmentation and with ``timm``'s recipe above; ``small``: padded random crop + flip; ``none``: off.
    augment: str = "auto"
    #: DataLoader workers decoding streamed folders (None: the CPU count minus one, at most 8).
    workers: int | None = None
    #: Distil from the dense model during the post-restructure fine-tune (loss: (1-α)·CE + α·T²·KL). Off by default:
    #: measured, it helps short fine-tunes and the 64-px RGB folder but lowers the headline run (README, "Against
    #: Torch-Pruning").
    distill: bool = False
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5
    #: float16 autocast in training and fine-tuning (CUDA only).
    amp: bool = False
    #: With edgeslice's own baseline: fine-tune a copy of the dense model the same way and report its accuracy.
    dense_control: bool = True
    #: How many channels each group keeps (:data:`edgeslice.allocation.WIDTH_RULES`): ``theta`` (the θ slice's
    #: critical channels), ``cap`` or ``lamp`` (θ sets the parameter budget, the semantic rank picks the channels).
    #: ``cap`` by measurement: it beat ``theta`` in all six runs of README "Widths" (3 families × θ 0.90/0.95).
    widths: str = "cap"
    #: θ at which the shipped compact model is sliced again for the device: its critical channels stay frozen when
    #: a device grows new classes, the rest are what growth may train (``bundle_stage``).
    grow_theta: float = 0.95
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.train_epochs <= 0 or self.finetune_epochs < 0:
            raise ValueError("train-epochs must be > 0 and finetune-epochs >= 0")
        if self.round_to < 1:
            raise ValueError("round-to must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch-size must be >= 1")
        if self.lr <= 0 or self.finetune_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"unknown quantize mode {self.quantize!r}; valid: {', '.join(QUANTIZE_MODES)}")
        if self.augment not in AUGMENT_MODES:
            raise ValueError(f"unknown augment mode {self.augment!r}; valid: {', '.join(AUGMENT_MODES)}")
        if self.widths not in WIDTH_RULES:
            raise ValueError(f"unknown width rule {self.widths!r}; valid: {', '.join(WIDTH_RULES)}")
        if self.widths != "theta" and self.slicing.strategy != "semantic":
            raise ValueError(f"--widths {self.widths} needs --strategy semantic (it ranks channels by their entry θ)")
        if self.distill_temperature <= 0 or not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError("distill-temperature must be > 0 and distill-alpha in [0, 1]")
        if self.checkpoint and (self.pretrained or self.pretrained_file):
            raise ValueError("--pretrained/--pretrained-file start a new baseline: they do not go with --checkpoint")
        if not 0.0 < self.grow_theta <= 1.0:
            raise ValueError(f"grow-theta must be in (0, 1], got {self.grow_theta}")
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressConfig:
        """Build from :meth:`to_dict` output or a recipe; nested ``slicing``/``pruning`` may be dicts.

        Raises:
            ValueError: unknown keys or invalid values (the message names them).
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown compress settings: {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("slicing"), dict):
            d["slicing"] = SliceConfig.from_dict(d["slicing"])
        if isinstance(d.get("pruning"), dict):
            d["pruning"] = IterativePruneConfig.from_dict(d["pruning"])
        for key in ("mean", "std"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)
