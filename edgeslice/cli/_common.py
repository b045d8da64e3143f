"""Shared CLI plumbing: the options every command takes, error handling, and JSON/table output."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

C = TypeVar("C")

console = Console()
err_console = Console(stderr=True)


class DeviceType(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class MetricName(str, Enum):
    avg = "avg"
    var = "var"
    ens = "ens"
    taylor = "taylor"
    deeplift = "deeplift"


class StrategyName(str, Enum):
    semantic = "semantic"
    category = "category"
    global_ = "global"
    random = "random"
    magnitude = "magnitude"


class BaselineName(str, Enum):
    zero = "zero"
    mean = "mean"


class SolverName(str, Enum):
    exact = "exact"
    scan = "scan"


class SimilarityName(str, Enum):
    cka = "cka"
    gram = "gram"


class AttackName(str, Enum):
    """Adversarial attack of ``readapt`` (L∞, inputs in [0, 1])."""

    fgsm = "fgsm"
    pgd = "pgd"


class OptimizerName(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class PrunerName(str, Enum):
    """Layer-wise sparsity allocation of the iterative pruning step (``none`` skips the step)."""

    lamp = "lamp"
    global_ = "global"
    uniform_plus = "uniform+"
    erk = "erk"
    none = "none"


ModelArg = Annotated[str, typer.Argument(help="timm model name or alias (mobilenetv3 = mobilenetv3_small_100).")]
DataOpt = Annotated[
    str, typer.Option("--data", help="fashion-mnist, digits, mnist, cifar10, or an ImageFolder directory.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for initialisation, shuffling and calibration sampling.")]
DeviceOpt = Annotated[DeviceType, typer.Option("--device-type", help="Where to run: auto picks CUDA when present.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress on stderr (bars on a terminal, plain [edgeslice] lines otherwise); errors still print.",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        exists=True,
        dir_okay=True,
        help="model.safetensors (with model.json beside it), or a plain timm state dict (.safetensors, "
        ".pth/.pt/.pth.tar/.bin, timm train.py checkpoints).",
    ),
]


def unit_interval(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"must be in (0, 1], got {value}")
    return value


def positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


ThetaOpt = Annotated[float, typer.Option("--theta", callback=unit_interval, help="Similarity threshold θ in (0, 1].")]
METRIC_HELP = (
    "Neuron contribution metric. deeplift is approximate on MobileNetV3-style models: captum's rescale rule skips "
    "Hardswish/Hardsigmoid and the squeeze-excite multiply (plain gradients there)."
)
MetricOpt = Annotated[MetricName, typer.Option("--metric", help=METRIC_HELP)]
STRATEGY_HELP = (
    "Neuron selection strategy; random and magnitude (output-channel weight norm) are cheap baselines that keep "
    "--ratio per layer."
)
StrategyOpt = Annotated[StrategyName, typer.Option("--strategy", help=STRATEGY_HELP)]
BaselineOpt = Annotated[
    BaselineName,
    typer.Option(
        "--baseline",
        help="DeepLIFT reference: zero (zeros after normalisation = the data-set mean colour) or mean (the "
        "per-pixel mean calibration image).",
    ),
]
SolverOpt = Annotated[
    SolverName,
    typer.Option("--solver", help="exact: prefix sums, all θ at once (default); scan: the paper's linear scan."),
]
IntervalOpt = Annotated[
    int, typer.Option("--interval", min=1, help="Channels added per step of the linear scan (--solver scan).")
]
SimilarityOpt = Annotated[
    SimilarityName,
    typer.Option("--similarity", help="cka: centered linear CKA (default); gram: the paper's uncentered Eq. 2."),
]
RatioOpt = Annotated[
    float,
    typer.Option("--ratio", callback=unit_interval, help="Kept share per layer for category/global."),
]
CalibOpt = Annotated[int, typer.Option("--calib-per-class", min=1, help="Calibration images per class (seeded).")]
ImageSizeOpt = Annotated[int | None, typer.Option("--image-size", min=8, help="Resize images to this side (px).")]
ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Use only these classes of --data: names, labels or ranges (e.g. 0-4 or Shirt,7)."),
]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Allow torchvision to download the data set.")]


_claims: list[contextlib.ExitStack] = []  # the running command's held output folders (see claim_out)


def handle_errors(fn):
    """Turn edgeslice's errors into a one-line message on stderr and exit code 1 (no traceback).

    Output folders claimed with :func:`claim_out` are released when the command ends, whichever way.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edgeslice.errors import EdgesliceError

        try:
            with contextlib.ExitStack() as stack:
                _claims.append(stack)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _claims.pop()
        except (EdgesliceError, ValueError) as e:
            from rich.markup import escape

            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            # escaped: a message may hold brackets that are not markup (pip install 'edgeslice[openvino]')
            err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def setup(json_out: bool, device_type: DeviceType, seed: int, quiet: bool = False):
    """Common start of a command: progress on stderr unless ``quiet``, seeded torch, the torch device.

    Progress never touches stdout, so it stays on under ``--json`` (``json_out``): a pipeline reads the one JSON
    document from stdout and the plain progress lines from stderr (:mod:`edgeslice._progress`).

    Under torchrun (``WORLD_SIZE`` > 1) this also joins the process group (gloo on CPU, nccl on CUDA with the
    device ``cuda:LOCAL_RANK``) and silences stdout on every rank but 0; errors still reach stderr from any rank.
    """
    from edgeslice import distributed
    from edgeslice._progress import set_enabled
    from edgeslice.models import resolve_device

    set_enabled(not quiet)
    import torch

    torch.manual_seed(seed)  # the same seed on every rank: identical initial weights and shuffles
    device = distributed.init_from_env(resolve_device(device_type.value))
    console.quiet = not distributed.is_main()
    return device


def claim_out(out: Path) -> Path:
    """Check and lock ``--out`` before any work (see :func:`edgeslice.artifacts.staging.claim_output`).

    Raises:
        OutputError: ``out`` is a file or not writable, another run holds it, or it holds a file edgeslice did not
            write under one of its artifact names.
    """
    from edgeslice.artifacts.staging import claim_output

    return _claims[-1].enter_context(claim_output(out))


def emit_json(obj: Any) -> None:
    """Print ``obj`` as the command's one JSON document (rank 0 only under torchrun)."""
    from edgeslice.distributed import is_main

    if not is_main():
        return
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def config_from(cls: type[C], options: dict[str, Any], **given: Any) -> C:
    """The frozen config ``cls`` built from a command's parsed options (``locals()`` of the command).

    Every field of ``cls`` that an option of the same name sets takes its value (an ``Enum`` option its ``.value``, a
    ``Path`` option a string where the field is a ``str``); ``given`` sets fields whose values need more than that
    (nested configs, parsed lists). Fields no option names keep their defaults.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in given:
            values[f.name] = given[f.name]
        elif f.name in options:
            value = options[f.name]
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Path) and str in (hints[f.name], *typing.get_args(hints[f.name])):
                value = str(value)
            values[f.name] = value
    return cls(**values)


def show_report(report: Any, json_out: bool, title: str) -> None:
    """Print a command's report: its JSON document under ``--json``, else a two-column table of its fields."""
    from edgeslice.pipeline.report import report_json

    data = report_json(report)
    if json_out:
        emit_json(data)
    else:
        console.print(table(title, ["", "value"], [[k, v] for k, v in data.items()]))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
