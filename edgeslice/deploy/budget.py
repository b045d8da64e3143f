"""What a model costs on a device (size, MACs, RAM), and the θ search that fits a model into a device's budgets.

Measurements (batch 1, at the model's input size):

- ``macs``: multiply-accumulates of every Conv2d and Linear, counted with forward hooks as
  ``output elements × (in_channels / groups) × kh × kw`` (Linear: ``output elements × in_features``). Elementwise
  work (activations, BatchNorm, squeeze-excite multiplies, pooling) is not counted; BatchNorm is folded on export.
- ``peak_activation_bytes``: max over leaf modules of (input + output elements) × bytes per element — the two
  buffers a layer-by-layer runtime must hold at once. It ignores tensors kept alive across layers (residual and
  squeeze-excite inputs), so it is a lower estimate of an arena planner's peak; on MobileNetV3 those are smaller
  than the largest expand layer.
- ``weight_bytes``: parameters × bytes per element of the precision (4 for fp32, 1 for int8) from
  :func:`measure_model`; replaced by the exact size of the ONNX file's initializers once a file exists
  (:func:`measure_onnx`, merged after it everywhere a file is measured).
- ``model_bytes``: the real ONNX file size (only once a file exists; ``measure_onnx``).

The latency estimate (MACs / the profile's MAC/s) is made by :meth:`edgeslice.deploy.devices.DeviceProfile.check`.

Example:
    >>> from edgeslice.deploy.budget import measure_model
    >>> measure_model(model, (1, 28, 28), "int8")["macs"]
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EdgesliceError
from ..torchutil import eval_mode
from .devices import BYTES_PER_ELEMENT, PRECISIONS, BudgetCheck, DeviceProfile

#: θ values the budget search tries (ascending); kept channels never decrease with θ.
DEFAULT_THETAS: tuple[float, ...] = (
    0.8, 0.85, 0.88, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999,
)  # fmt: skip


class BudgetError(EdgesliceError):
    """No candidate model meets the device's budgets."""


def count_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int, str]:
    """MACs of Conv2d/Linear layers and the peak (input + output) elements of any leaf module, for one sample.

    Not ``tp.utils.count_ops_and_params``: its counts are not the same (measured +0.05 to +0.45 % on
    MobileNetV3-small, EfficientNet-B0, ResNet-18 and the MLP, −0.12 % on MobileNetV3-small-050 at 32 px; within 1 %,
    tested in ``tests/test_budget.py``) because it also counts some elementwise ops (bias, BatchNorm, activations) and
    not others, while a device profile's ``macs_per_s`` is a multiply-accumulate throughput; and one
    pass here also yields the peak activation size, which torch-pruning does not measure. Switching would move every
    latency estimate and could change the θ a device search picks.

    Args:
        model: any module (evaluated in eval mode, unchanged).
        example: a batch of one, e.g. ``(1, C, H, W)``.

    Returns:
        ``(macs, peak_elements, peak_module_name)``.
    """
    macs = 0
    peak, peak_name = int(example[:1].numel()), "input"
    hooks = []

    def hook(name: str, module: nn.Module):
        def fn(_m, inputs, output):
            nonlocal macs, peak, peak_name
            out = output if isinstance(output, torch.Tensor) else None
            if out is None:
                return
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs += out.numel() * (module.in_channels // module.groups) * kh * kw
            elif isinstance(module, nn.Linear):
                macs += out.numel() * module.in_features
            elems = out.numel() + sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
            if elems > peak:
                peak, peak_name = elems, name

        return fn

    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(hook(name, module)))
    try:
        with eval_mode(model), torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return int(macs), int(peak), peak_name


def measure_model(model: nn.Module, input_shape: Sequence[int], precision: str = "fp32") -> dict[str, Any]:
    """Structural cost of ``model`` at batch 1 (see the module docstring for the formulas).

    Args:
        model: the model (CPU or GPU; unchanged).
        input_shape: ``(C, H, W)`` of one sample.
        precision: ``fp32`` or ``int8``.

    Returns:
        ``precision``, ``input_shape``, ``params``, ``weight_bytes``, ``macs``, ``peak_activation_bytes``,
        ``peak_layer``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    example = torch.zeros(1, *input_shape, device=device)
    macs, peak, peak_name = count_macs(model, example)
    params = sum(t.numel() for t in model.parameters())
    bpe = BYTES_PER_ELEMENT[precision]
    return {
        "precision": precision,
        "input_shape": [int(s) for s in input_shape],
        "params": int(params),
        "weight_bytes": int(params * bpe),
        "macs": macs,
        "peak_activation_bytes": int(peak * bpe),
        "peak_layer": peak_name,
    }


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def measure_onnx(path: str | Path) -> dict[str, Any]:
    """``model_bytes`` (raw file size), ``model_gzip_bytes``, ``opset`` and ``weight_bytes`` of an ONNX file.

    ``weight_bytes`` is the size of the file's initializers: exact where :func:`measure_model`'s params × bytes
    estimate is not (BatchNorm folded into the convolutions; int8 biases, scales and an fp32 head).
    """
    import onnx
    from onnx import numpy_helper

    raw = Path(path).read_bytes()
    proto = onnx.load_from_string(raw)
    weights = sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        "model_file": Path(path).name,
        "model_bytes": len(raw),
        "model_gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0)),
        "opset": int(opset),
        "weight_bytes": int(weights),
    }


def _recorded_precision(folder: Path) -> str | None:
    """The shipped precision: the manifest's effective config (``quantize``), else ``report.json``."""
    for name in ("manifest.json", "report.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if name == "manifest.json":
            quantize = (doc.get("config") or {}).get("quantize")
            if quantize in ("int8", "none"):
                return "int8" if quantize == "int8" else "fp32"
        else:
            return (doc.get("budget") or {}).get("precision") or doc.get("precision")
    return None


def measure_artifacts(folder: str | Path, precision: str | None = None) -> dict[str, Any]:
    """Re-measure a ``compress`` output folder: structure from the checkpoint, size from the ONNX file.

    Args:
        folder: holds ``model.safetensors`` + ``model.json`` and ``model.onnx`` (and ``model.int8.onnx`` for int8).
        precision: ``fp32`` or ``int8``; default: ``int8`` when the effective config in ``manifest.json`` says
            ``quantize = "int8"`` (``compress`` records a device search's int8 choice there too), else the
            ``precision`` in ``report.json``, else ``fp32``.

    Returns:
        :func:`measure_model`'s keys plus :func:`measure_onnx`'s for the ONNX file of that precision — the input
        :meth:`edgeslice.deploy.devices.DeviceProfile.check` takes.

    Raises:
        ModelError: missing or corrupt checkpoint; EdgesliceError: the ONNX file of that precision is missing.
    """
    from ..models import load_checkpoint

    folder = Path(folder)
    precision = precision or _recorded_precision(folder) or "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    model, meta = load_checkpoint(folder)
    onnx_path = folder / ("model.int8.onnx" if precision == "int8" else "model.onnx")
    if not onnx_path.is_file():
        raise EdgesliceError(f"{onnx_path} not found (needed to measure the {precision} model)")
    measured = measure_model(model, (meta.in_chans, meta.input_size, meta.input_size), precision)
    return {**measured, **measure_onnx(onnx_path)}


@dataclass
class Candidate:
    """One (θ, precision) tried by :func:`search_theta`, with its measurement and budget checks."""

    theta: float
    precision: str
    measured: dict[str, Any]
    checks: list[BudgetCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failing(self) -> list[BudgetCheck]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta,
            "precision": self.precision,
            "ok": self.ok,
            "measured": self.measured,
            "checks": [c.to_dict() for c in self.checks],
        }


def search_theta(
    profile: DeviceProfile,
    measure: Callable[[float, str], dict[str, Any]],
    *,
    thetas: Sequence[float] = DEFAULT_THETAS,
    precisions: Sequence[str] = PRECISIONS,
) -> tuple[Candidate | None, list[Candidate]]:
    """The largest θ (most channels, so the most accurate model) that meets every budget, per precision.

    Size, MACs and RAM never decrease with θ (a larger θ keeps a superset of channels), so each precision is a
    binary search over ``thetas``. Among precisions the one admitting the largest θ wins; on a tie the earlier one
    in ``precisions`` (fp32 before int8: no quantization error).

    Args:
        profile: the device.
        measure: ``(theta, precision) -> measurement`` for :meth:`DeviceProfile.check` (called at most
            ~log2(len(thetas)) + 2 times per precision).
        thetas: candidate θ values.
        precisions: precisions to try (unsupported ones are skipped).

    Returns:
        ``(best candidate or None, every candidate tried)``.
    """
    grid = sorted(set(float(t) for t in thetas))
    if not grid:
        raise ValueError("no θ candidates to search")
    tried: list[Candidate] = []

    def run(i: int, precision: str) -> Candidate:
        cand = Candidate(grid[i], precision, measure(grid[i], precision))
        cand.checks = profile.check(cand.measured)
        tried.append(cand)
        return cand

    best: Candidate | None = None
    for precision in [p for p in precisions if profile.supports(p)]:
        lo = run(0, precision)
        if not lo.ok:
            continue
        hi_i = len(grid) - 1
        found = lo
        if hi_i > 0:
            hi = run(hi_i, precision)
            if hi.ok:
                found = hi
            else:
                good, bad = 0, hi_i  # invariant: grid[good] fits, grid[bad] does not
                while bad - good > 1:
                    mid = (good + bad) // 2
                    cand = run(mid, precision)
                    if cand.ok:
                        good, found = mid, cand
                    else:
                        bad = mid
        if best is None or found.theta > best.theta:
            best = found
    return best, tried


def explain_failure(profile: DeviceProfile, tried: list[Candidate]) -> str:
    """One line: which budgets the smallest candidate fails, by how much, for each precision tried."""
    parts = []
    smallest = min((c.theta for c in tried), default=None)
    for c in tried:
        if c.theta == smallest:
            parts.append(f"{c.precision}: " + "; ".join(b.describe() for b in c.failing()))
    if not parts:
        supported = ", ".join(profile.precisions)
        return f"no precision to try for device {profile.name!r} (it supports {supported})"
    return f"no model fits device {profile.name!r} even at the smallest θ={smallest:g}: " + " | ".join(parts)


__all__ = [
    "DEFAULT_THETAS",
    "BudgetError",
    "Candidate",
    "StructureProbe",
    "count_macs",
    "explain_failure",
    "measure_artifacts",
    "measure_model",
    "measure_onnx",
    "onnx_opset",
    "search_theta",
]


class StructureProbe:
    """Measures candidate θ values without fine-tuning: slice, restructure a copy, export (and quantize) it.

    Fine-tuning and unstructured pruning change weights, never shapes, so the file sizes measured here are the ones
    the final artifacts will have. One probe is built per search and caches each θ's model and ONNX file.

    Args:
        slicer: a calibrated :class:`~edgeslice.slicing.SemanticSlicer`.
        original: the unpruned model (left unchanged).
        example: a normalised input batch on the model's device (tracing and export).
        input_shape: ``(C, H, W)``.
        workdir: scratch folder for the probe's ONNX files.
        round_to: channel rounding of :func:`~edgeslice.restructure.restructure_`.
        opset: ONNX opset to export with.
        solver: the slicer's solver.
        interval: the scan solver's step.
        widths: the restructure's width rule (:data:`edgeslice.allocation.WIDTH_RULES`).
    """

    def __init__(
        self,
        slicer: Any,
        original: nn.Module,
        example: torch.Tensor,
        input_shape: Sequence[int],
        workdir: Path,
        *,
        round_to: int = 8,
        opset: int = 17,
        solver: str = "exact",
        interval: int = 1,
        widths: str = "theta",
    ) -> None:
        self.widths = widths
        self.slicer, self.original, self.example = slicer, original, example
        self.input_shape, self.workdir = tuple(input_shape), Path(workdir)
        self.round_to, self.opset, self.solver, self.interval = round_to, opset, solver, interval
        self._fp32: dict[float, tuple[dict[str, Any], Path]] = {}
        self._int8: dict[float, dict[str, Any]] = {}

    def _build(self, theta: float) -> tuple[dict[str, Any], Path]:
        if theta not in self._fp32:
            import copy

            from ..allocation import allocate_keep
            from ..restructure import restructure_
            from .export import export_onnx

            result = self.slicer.slice(theta=theta, strategy="semantic", solver=self.solver, interval=self.interval)
            model = copy.deepcopy(self.original).eval()
            keep = allocate_keep(self.widths, model, self.slicer, result, self.example[:2], round_to=self.round_to)
            restructure_(
                model,
                self.slicer.layers,
                keep,
                self.example[:2],
                scores=result.scores,
                round_to=self.round_to,
            )
            structure = measure_model(model, self.input_shape, "fp32")
            path = export_onnx(model.cpu(), self.example[:1].cpu(), self.workdir / f"theta{theta:g}.onnx",
                               opset=self.opset)  # fmt: skip
            self._fp32[theta] = (structure, path)
        return self._fp32[theta]

    def __call__(self, theta: float, precision: str) -> dict[str, Any]:
        """The measurement of ``theta`` at ``precision`` (sizes from real ONNX files)."""
        structure, path = self._build(theta)
        bpe = BYTES_PER_ELEMENT[precision]
        measured = {
            **structure,
            "precision": precision,
            "weight_bytes": structure["params"] * bpe,
            "peak_activation_bytes": structure["peak_activation_bytes"] // BYTES_PER_ELEMENT["fp32"] * bpe,
        }
        if precision == "fp32":
            return {**measured, **measure_onnx(path)}
        if theta not in self._int8:
            from .quantize import quantize_int8

            # Only the file size is needed here, and it depends on shapes alone: a few samples calibrate enough.
            q = quantize_int8(path, path.with_suffix(".int8.onnx"), [self.example[:8].cpu().numpy()])
            self._int8[theta] = measure_onnx(q)
        return {**measured, **self._int8[theta]}
