"""``edgeslice run``: the whole compression pipeline from a recipe (``recipes/*.toml``), with ``--set`` overrides.

A recipe is a :class:`~edgeslice.pipeline.config.CompressConfig` in TOML. :func:`run` compresses as it says into a
staging folder, adds ``recipe.effective.toml`` (and the C header) and rewrites the manifest, so ``out`` holds all of
it or nothing.

config = RunConfig(recipe="mobilenetv3-fashion-mnist", overrides=("slicing.theta=0.9",), out=Path("out/run"))
report = run(config, torch.device("cpu"))
print(report.compress.compression_rate, report.recipe)
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts.staging import claim_output, staging_dir
from .config import CompressConfig
from .report import INLINE
from .results import CompressReport


@dataclass(frozen=True)
class RunConfig:
    """What ``edgeslice run`` does, as one validated value (the command's options, same names)."""

    recipe: str
    overrides: tuple[str, ...] = ()
    seed: int | None = None
    out: Path | None = None
    emit_c_header: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.recipe:
            raise ValueError("give a recipe name or file")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @property
    def path(self) -> Path:
        """The recipe file (a shipped name resolved through the recipe folders).

        Raises:
            ConfigError: no such recipe.
        """
        from .recipes import find_recipe

        return find_recipe(self.recipe)

    @property
    def out_dir(self) -> Path:
        """``out``, or ``edgeslice-out/<recipe name>``."""
        return self.out or Path("edgeslice-out") / self.path.stem

    def compress_config(self) -> CompressConfig:
        """The recipe with the overrides (``--seed`` last) applied, validated.

        Raises:
            ConfigError: the recipe file or an override is unusable.
        """
        from .recipes import load_recipe

        return load_recipe(self.path, [*self.overrides, *([f"seed={self.seed}"] if self.seed is not None else [])])

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RunReport:
    """What ``edgeslice run`` wrote and measured: compress's report (its keys at the top level), ``out``, ``recipe``."""

    compress: CompressReport = field(metadata=INLINE)
    out: str
    recipe: str


def run(config: RunConfig, device: torch.device) -> RunReport:
    """Compress as ``config``'s recipe says and write the artifacts, ``recipe.effective.toml`` and ``manifest.json``.

    Same recipe and seed → byte-identical index, checkpoint, ONNX and manifest (see docs/artifacts.md).

    Raises:
        ConfigError: the recipe or an override is unusable (checked before ``out`` is touched).
        OutputError: ``out`` cannot be written or holds files edgeslice did not write.
    """
    path, cfg = config.path, config.compress_config()
    out = config.out_dir
    with claim_output(out):
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        report = run_recipe(
            cfg, out, device, name=path.stem, overrides=list(config.overrides), emit_c_header=config.emit_c_header
        )
    return RunReport(compress=report, out=str(out), recipe=str(path))


def run_recipe(
    cfg: CompressConfig,
    out: Path,
    device: torch.device,
    *,
    name: str,
    overrides: list[str],
    emit_c_header: bool = False,
) -> CompressReport:
    """``compress`` into a staging folder, add ``recipe.effective.toml`` (and the C header), rewrite the manifest.

    Everything lands in ``out`` only when all of it succeeded.

    Args:
        cfg: the effective configuration.
        out: the output folder.
        device: where torch runs.
        name: the recipe's name, recorded in the effective recipe's header comment with the overrides.
        overrides: the ``--set`` items as given.
        emit_c_header: also write ``critical_index.h``.

    Returns:
        The compress report.
    """
    from ..artifacts.files import atomic_write_bytes
    from ..artifacts.manifest import read_manifest, write_manifest
    from .compress import compress
    from .recipes import EFFECTIVE_NAME, config_from_dict, config_to_toml

    with staging_dir(out) as staging:
        report = compress(cfg, staging, device)
        # What compress ran, as its manifest says: with a device, θ and the precision chosen by the budget search.
        effective = read_manifest(staging)["config"]
        effective = config_from_dict(effective).to_dict()  # fields in declaration order, as in a hand-written recipe
        command = shlex.join(["edgeslice", "run", name, *(a for o in overrides for a in ("--set", o))])
        header = f"Effective configuration written by `{command}` (a recipe: `edgeslice run` loads it again)."
        if effective != cfg.to_dict():
            header += f"\nθ and quantize as chosen by the budget search for device {cfg.device!r}."
        atomic_write_bytes(staging / EFFECTIVE_NAME, config_to_toml(effective, header=header).encode())
        if emit_c_header:
            from ..deploy.cheader import write_c_header
            from ..index import CriticalIndex

            write_c_header(CriticalIndex.load(staging / "critical_index"), staging / "critical_index.h")
        write_manifest(staging, effective, cfg.seed)
    return report


def shipped_recipes() -> list[dict[str, Any]]:
    """One row per shipped recipe: ``name``, ``path``, ``model``, ``device``, ``about`` (its description)."""
    from .recipes import find_recipe, list_recipes, load_recipe, read_recipe

    rows = []
    for name in list_recipes():
        path = find_recipe(name)
        cfg = load_recipe(path)
        description = read_recipe(path)[1].get("description", "")
        rows.append({"name": name, "path": str(path), "model": cfg.model, "device": cfg.device, "about": description})
    return rows


__all__ = ["RunConfig", "RunReport", "run", "run_recipe", "shipped_recipes"]
