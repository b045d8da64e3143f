"""The device stages of ``compress``: resolve the target, search θ for a device profile, check the shipped artifacts.

:func:`resolve_target` runs first (a bad ``--device`` is refused before any work). :func:`search_stage` measures
restructured, not yet fine-tuned candidates (:class:`~edgeslice.deploy.budget.StructureProbe`) and returns the θ
values to try, largest first; :func:`budget_stage` checks the artifacts actually written and raises
:class:`DoesNotFit` so that ``compress`` steps down to the next θ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .._progress import progress
from .config import CompressConfig

if TYPE_CHECKING:
    from ..deploy.budget import BudgetError
    from ..deploy.devices import DeviceProfile
    from .results import Sliced, Timer


class DoesNotFit(Exception):
    """The measured artifacts of one θ miss a device budget (the search steps down)."""

    def __init__(self, theta: float, checks: list[Any]) -> None:
        super().__init__(theta)
        self.theta, self.checks = theta, checks


@dataclass
class Target:
    """Where the model goes: a device profile (or none), the ONNX opset and the precision to ship."""

    profile: DeviceProfile | None
    opset: int
    precision: str


@dataclass
class Search:
    """The device search's outcome: the θ values to try (largest first) and what each failed attempt missed."""

    profile: DeviceProfile | None
    opset: int
    precision: str
    attempts: list[float]
    info: dict[str, Any] | None = None
    failures: list[DoesNotFit] = field(default_factory=list)

    def exhausted(self) -> BudgetError:
        """The error for "every attempt's measured artifacts missed a budget"."""
        from ..deploy.budget import BudgetError

        last = self.failures[-1]
        return BudgetError(
            f"no model fits device {self.profile.name!r}: the measured artifacts at θ={last.theta:g} "
            f"({self.precision}) miss " + "; ".join(c.describe() for c in last.checks if not c.ok)
        )


def resolve_target(cfg: CompressConfig) -> Target:
    """The device profile of ``cfg.device`` (checked against the other options) and the opset it allows.

    Raises:
        ValueError: an unknown device, ``--device`` without the semantic strategy, or int8 on a device without it.
    """
    from ..deploy.export import DEFAULT_OPSET

    precision = "int8" if cfg.quantize == "int8" else "fp32"
    if not cfg.device:
        return Target(None, DEFAULT_OPSET, precision)
    from ..deploy.devices import get_device

    profile = get_device(cfg.device)
    if cfg.slicing.strategy != "semantic":
        raise ValueError(f"--device searches θ: it needs --strategy semantic, not {cfg.slicing.strategy!r}")
    if cfg.quantize == "int8" and not profile.supports("int8"):
        raise ValueError(f"device {profile.name!r} does not support int8 (it supports {', '.join(profile.precisions)})")
    return Target(profile, min(DEFAULT_OPSET, profile.opset), precision)


def search_stage(cfg: CompressConfig, target: Target, sliced: Sliced, timer: Timer) -> Search:
    """Without a device: the one θ of ``cfg``. With one: the largest θ whose restructured model meets every budget.

    Raises:
        BudgetError: no candidate meets the device's budgets (nothing is written).
    """
    import tempfile

    if target.profile is None:
        return Search(None, target.opset, target.precision, [cfg.slicing.theta])
    from ..deploy.budget import DEFAULT_THETAS, BudgetError, StructureProbe, explain_failure, search_theta

    profile = target.profile
    precisions = ["int8"] if cfg.quantize == "int8" else ["fp32", "int8"]
    with timer.span("budget_search_s"), tempfile.TemporaryDirectory(prefix="edgeslice-probe.") as tmp:
        probe = StructureProbe(
            sliced.slicer, sliced.dense, sliced.example, sliced.input_shape, Path(tmp), round_to=cfg.round_to,
            opset=target.opset, solver=cfg.slicing.solver, interval=cfg.slicing.interval, widths=cfg.widths,
        )  # fmt: skip
        with progress(f"budget search ({profile.name})", None):
            best, tried = search_theta(profile, probe, thetas=DEFAULT_THETAS, precisions=precisions)
    if best is None:
        raise BudgetError(explain_failure(profile, tried))
    search = Search(
        profile, target.opset, best.precision, sorted((th for th in DEFAULT_THETAS if th <= best.theta), reverse=True)
    )
    search.info = {
        "thetas": list(DEFAULT_THETAS),
        "chosen_by_structure": best.theta,
        "candidates": [
            {"theta": c.theta, "precision": c.precision, "ok": c.ok, "model_bytes": c.measured["model_bytes"],
             "macs": c.measured["macs"], "params": c.measured["params"], "failing": [b.name for b in c.failing()]}
            for c in tried
        ],
    }  # fmt: skip
    return search


def budget_stage(
    cfg: CompressConfig,
    effective: CompressConfig,
    search: Search,
    model: nn.Module,
    meta: Any,
    staging: Path,
    prune_report: Any,
) -> dict[str, Any] | None:
    """The device budgets checked on the artifacts in ``staging`` (None without a device).

    Raises:
        DoesNotFit: a budget is missed; ``compress`` steps down to the next θ.
    """
    if search.profile is None:
        return None
    from ..deploy.budget import measure_model, measure_onnx

    profile, precision = search.profile, search.precision
    measured = {
        **measure_model(model, (meta.in_chans, meta.input_size, meta.input_size), precision),
        **measure_onnx(staging / ("model.int8.onnx" if precision == "int8" else "model.onnx")),
    }
    checks = profile.check(measured)
    if not all(c.ok for c in checks):
        raise DoesNotFit(effective.slicing.theta, checks)
    budget = {
        "device": cfg.device,
        "profile": profile.to_dict(),
        "precision": precision,
        "theta": effective.slicing.theta,
        "measured": measured,
        "estimated_latency_ms": profile.estimated_latency_ms(measured["macs"], precision),
        "checks": [c.to_dict() for c in checks],
        "ok": True,
        "pruning_note": None
        if prune_report is None
        else "unstructured zeros do not change the dense ONNX size, RAM or MACs: every pruning iteration "
        "fits exactly when its restructured start does, so the pruner's last kept iteration is shipped",
    }
    if search.info is not None:
        stepped = [{"theta": f.theta, "failing": [c.to_dict() for c in f.checks if not c.ok]} for f in search.failures]
        budget["search"] = {**search.info, "stepped_down": stepped}
    return budget
