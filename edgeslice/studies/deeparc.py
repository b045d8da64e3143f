"""DeepArc baseline (Ren et al., ICSE 2023; NeuSemSlice §2.2): layer-level redundancy by linear CKA.

Each block's output is compared with its input (the previous block's output) by centered linear CKA over a
calibration sample (paper Eq. 1–2 with centering, Kornblith et al. 2019). A block whose output is at least
``threshold`` similar to its input and has the input's shape adds little: it is replaced by the identity. Blocks
that change the shape cannot be dropped without DeepArc's "sewing layer", which does not shrink the model, so they
are reported but never removed (the paper finds the same for its MLP).

Blocks are the residual blocks of timm CNNs (``blocks.i.j``, ResNet ``layerK.i``), else the top-level children
with parameters.

Example:
    >>> report = deeparc(model, batches, threshold=0.99)
    >>> pruned = copy.deepcopy(model); remove_blocks_(pruned, report.redundant)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import count_parameters
from ..torchutil import eval_mode


@dataclass
class DeepArcReport:
    """Consecutive-block similarities and the blocks DeepArc removes.

    Attributes:
        threshold: CKA at or above which a same-shape block is redundant.
        similarities: per block ``{block, cka, same_shape, params}`` (cka of its output with its input).
        redundant: blocks replaced by the identity.
        params_before / params_after: parameter counts without / with the redundant blocks.
    """

    threshold: float
    similarities: list[dict[str, Any]] = field(default_factory=list)
    redundant: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def compression_rate(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "similarities": self.similarities,
            "redundant": self.redundant,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "compression_rate": self.compression_rate,
            "max_cka": max((s["cka"] for s in self.similarities), default=None),
        }


def find_blocks(model: nn.Module) -> list[str]:
    """Module names of the model's blocks, in registration (forward) order."""
    names: list[str] = []
    modules = dict(model.named_modules())
    if isinstance(modules.get("blocks"), nn.Sequential):
        for stage_name, stage in modules["blocks"].named_children():
            if isinstance(stage, nn.Sequential):
                names.extend(f"blocks.{stage_name}.{b}" for b, _ in stage.named_children())
            else:
                names.append(f"blocks.{stage_name}")
        return names
    stages = [n for n in ("layer1", "layer2", "layer3", "layer4") if isinstance(modules.get(n), nn.Sequential)]
    if stages:
        return [f"{s}.{b}" for s in stages for b, _ in modules[s].named_children()]
    return [n for n, m in model.named_children() if any(True for _ in m.parameters())]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Centered linear CKA of two representations of the same n samples, (n, D1) and (n, D2)."""
    x = x.flatten(1).to(torch.float64)
    y = y.flatten(1).to(torch.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    # ⟨K_x, K_y⟩ = ‖yᵀx‖², ‖K_x‖ = ‖xᵀx‖: sample Gram matrices never built when D < n.
    if x.shape[1] < x.shape[0] and y.shape[1] < y.shape[0]:
        num = (y.T @ x).pow(2).sum()
        den = (x.T @ x).norm() * (y.T @ y).norm()
    else:
        kx, ky = x @ x.T, y @ y.T
        num = (kx * ky).sum()
        den = kx.norm() * ky.norm()
    return float(num / den) if float(den) > 0 else 0.0


def block_similarities(
    model: nn.Module,
    blocks: list[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    max_samples: int = 500,
) -> list[dict[str, Any]]:
    """CKA between each block's input and output over up to ``max_samples`` samples."""
    modules = dict(model.named_modules())
    ins: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}
    outs: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}

    def pre_hook_for(name: str):
        def hook(_m, inputs):
            # Taken before the block runs: an in-place op inside it may overwrite its input.
            ins[name].append(inputs[0].detach().flatten(1).to("cpu", copy=True))

        return hook

    def hook_for(name: str):
        def hook(_m, _inputs, out):
            outs[name].append(out.detach().flatten(1).to("cpu", copy=True))

        return hook

    handles = [modules[b].register_forward_pre_hook(pre_hook_for(b)) for b in blocks]
    handles += [modules[b].register_forward_hook(hook_for(b)) for b in blocks]
    seen = 0
    try:
        with torch.no_grad(), eval_mode(model):
            for x, _ in batches:
                x = x[: max_samples - seen].to(device)
                model(prepare(x) if prepare is not None else x)
                seen += len(x)
                if seen >= max_samples:
                    break
    finally:
        for h in handles:
            h.remove()
    rows = []
    for b in blocks:
        if not outs[b]:
            continue  # not on the forward path
        xi, xo = torch.cat(ins[b]), torch.cat(outs[b])
        same = len(outs[b]) == len(ins[b]) and ins[b][0].shape == outs[b][0].shape
        rows.append(
            {
                "block": b,
                "cka": linear_cka(xi, xo),
                "same_shape": bool(same),
                "params": sum(p.numel() for p in modules[b].parameters()),
            }
        )
    return rows


def remove_blocks_(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named blocks by ``nn.Identity`` in place; returns the model."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model


def deeparc(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    threshold: float = 0.99,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    max_samples: int = 500,
) -> DeepArcReport:
    """Find DeepArc's redundant blocks (the model is not changed).

    Args:
        model: the model.
        batches: calibration (inputs, labels) batches.
        threshold: a same-shape block whose output has CKA ≥ threshold with its input is redundant.
        prepare: normalisation applied to each batch.
        device: where to run.
        max_samples: samples used for CKA.

    Raises:
        ValueError: threshold outside (0, 1].
    """
    import copy

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"DeepArc threshold must be in (0, 1], got {threshold}")
    rows = block_similarities(
        model, find_blocks(model), batches, prepare=prepare, device=device, max_samples=max_samples
    )
    redundant = [r["block"] for r in rows if r["same_shape"] and r["params"] > 0 and r["cka"] >= threshold]
    before = count_parameters(model)
    after = count_parameters(remove_blocks_(copy.deepcopy(model), redundant)) if redundant else before
    return DeepArcReport(
        threshold=threshold, similarities=rows, redundant=redundant, params_before=before, params_after=after
    )
